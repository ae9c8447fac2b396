#include <dbus/dbus.h>
// The connection thread's event loop (Glibc does not export these to Swift).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
