// Thin wrappers over the Linux calls the runner's threads are built of: epoll, eventfd, timerfd
// (threads, the clock and errno are in SystemSupport). Each names the C function it wraps and retries EINTR where that is right.
import CShims
import Glibc
import Synchronization
// Re-exported: the daemon's public API throws SystemCallError, and its files use the helpers unprefixed.
@_exported import SystemSupport

/// The name of a `readdir` entry, read in place up to its NUL. Safe: readdir returns a pointer
/// to a whole record whose `d_name` is NUL-terminated within `d_reclen`; loading the 256-byte
/// `d_name` field as a value instead reads past the end of readdir's buffer for a short last
/// record (AddressSanitizer caught it in `ProcStat.all`, issue 9).
func direntName(_ entry: UnsafeMutablePointer<dirent>) -> String {
    let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
    return String(cString: UnsafeRawPointer(entry).advanced(by: offset).assumingMemoryBound(to: CChar.self))
}

/// An epoll instance (`epoll_create1(EPOLL_CLOEXEC)`); each registration carries a 64-bit token.
struct Epoll: ~Copyable {
    let fd: Int32

    init() throws(SystemCallError) {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else { throw SystemCallError(call: "epoll_create1", errno: errno) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// `epoll_ctl(EPOLL_CTL_ADD)` for readability (level-triggered).
    func add(_ watched: Int32, token: UInt64) throws(SystemCallError) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = token
        guard epoll_ctl(fd, EPOLL_CTL_ADD, watched, &event) == 0 else {
            throw SystemCallError(call: "epoll_ctl(ADD)", errno: errno)
        }
    }

    /// `epoll_ctl(EPOLL_CTL_DEL)`; closing the fd afterwards is the caller's job.
    func remove(_ watched: Int32) {
        _ = epoll_ctl(fd, EPOLL_CTL_DEL, watched, nil)
    }

    /// `epoll_wait` with no timeout: every wake-up is an event. Returns the ready tokens.
    func wait(into buffer: inout [epoll_event]) -> ArraySlice<epoll_event> {
        let count = buffer.withUnsafeMutableBufferPointer { events in
            retryOnInterrupt { epoll_wait(fd, events.baseAddress, Int32(events.count), -1) }
        }
        return buffer[0..<max(Int(count), 0)]
    }
}

/// An `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)` used to wake a thread's epoll loop.
struct EventFD: ~Copyable {
    let fd: Int32

    init() throws(SystemCallError) {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw SystemCallError(call: "eventfd", errno: errno) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Adds one to the counter (`write`): the epoll loop wakes.
    func signal() {
        var one: UInt64 = 1
        _ = retryOnInterrupt { write(fd, &one, 8) }
    }

    /// Resets the counter (`read`).
    func drain() {
        var value: UInt64 = 0
        _ = retryOnInterrupt { read(fd, &value, 8) }
    }
}

/// `timerfd_create(CLOCK_MONOTONIC)` armed to expire once after `delay`; the caller closes it.
func makeOneShotTimer(after delay: Duration) throws(SystemCallError) -> Int32 {
    let fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
    guard fd >= 0 else { throw SystemCallError(call: "timerfd_create", errno: errno) }
    let (seconds, attoseconds) = delay.components
    var nanoseconds = Int(attoseconds / 1_000_000_000)
    if seconds <= 0 && nanoseconds <= 0 { nanoseconds = 1 }  // zero would disarm it
    var spec = itimerspec(
        it_interval: timespec(tv_sec: 0, tv_nsec: 0),
        it_value: timespec(tv_sec: Int(max(seconds, 0)), tv_nsec: nanoseconds))
    guard timerfd_settime(fd, 0, &spec, nil) == 0 else {
        let code = errno
        close(fd)
        throw SystemCallError(call: "timerfd_settime", errno: code)
    }
    return fd
}

