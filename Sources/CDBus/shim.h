#include <dbus/dbus.h>
// The connection thread's event loop (Glibc does not export these to Swift).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

// ThreadSanitizer's happens-before annotations, for a handoff it cannot see (see
// docs/sanitizers.md: a continuation resumed before its task suspends). Weak: a -sanitize=thread
// build links TSan's runtime, which defines them; elsewhere they are null and these do nothing.
// (Not `#if __has_feature(thread_sanitizer)`: this header is compiled by Swift's Clang importer,
// which need not be told about -sanitize=thread.)
extern void __tsan_acquire(void *address) __attribute__((weak));
extern void __tsan_release(void *address) __attribute__((weak));
static inline void bgw_tsan_acquire(void *address) { if (__tsan_acquire) __tsan_acquire(address); }
static inline void bgw_tsan_release(void *address) { if (__tsan_release) __tsan_release(address); }
