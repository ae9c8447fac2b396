// The Linux helpers every part of bgworker needs, in one copy (issue 9): a named thread of our
// own, the monotonic clock in nanoseconds, Duration to nanoseconds, a failed call's errno, and
// the NSS look-ups (getpwnam_r, getgrnam_r, getgrouplist) with their ERANGE retry.
import CShims
import Glibc

/// The text of an errno value, e.g. "No such file or directory".
public func errnoText(_ code: Int32) -> String {
    String(cString: strerror(code))
}

/// A failed system call: the call and its errno.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    public var call: String
    public var errno: Int32
    public var description: String { "\(call): \(errnoText(errno))" }
    public init(call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }
}

/// Calls `body` until it does not fail with EINTR.
@inline(__always)
public func retryOnInterrupt<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let rc = body()
        if rc < 0 && errno == EINTR { continue }
        return rc
    }
}

/// Starts a detached pthread named `name` (as `top -H` and /proc show it) that runs `body` and
/// exits. Unlike Dispatch workers or the cooperative pool, the thread lives exactly as long as
/// `body` runs, which is what PR_SET_PDEATHSIG (armed per spawning *thread*) needs, and a
/// blocking wait on it never holds a thread of Swift's pool.
public func startDedicatedThread(
    name: String, stackSize: Int = 512 * 1024, _ body: @escaping @Sendable () -> Void
) throws(SystemCallError) {
    final class Box: Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
    }
    // Retained here, released by takeRetainedValue on the new thread, or below without a thread.
    let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    pthread_attr_setstacksize(&attributes, stackSize)
    var thread = pthread_t()
    let rc = pthread_create(&thread, &attributes, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        _bgw_set_thread_name(box.name)
        box.body()
        return nil
    }, box)
    if rc != 0 {
        Unmanaged<Box>.fromOpaque(box).release()
        throw SystemCallError(call: "pthread_create", errno: rc)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of timerfds, pidfd waits and the proc connector.
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// Whole nanoseconds of a duration, saturating at Int64's bounds.
public func nanoseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    if overflow { return seconds < 0 ? .min : .max }
    let (sum, sumOverflow) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000)
    if sumOverflow { return seconds < 0 ? .min : .max }
    return sum
}

/// A user's passwd entry, by name or by a numeric uid (getpwnam_r, getpwuid_r); nil when there
/// is none.
public func passwdEntry(_ user: String) -> (name: String, uid: uid_t, gid: gid_t)? {
    var entry = passwd()
    var result: UnsafeMutablePointer<passwd>?
    return withNSSBuffer { raw in
        if let uid = uid_t(user) {
            getpwuid_r(uid, &entry, raw.baseAddress!, raw.count, &result)
        } else {
            getpwnam_r(user, &entry, raw.baseAddress!, raw.count, &result)
        }
    } then: {
        result == nil ? nil : (String(cString: entry.pw_name), entry.pw_uid, entry.pw_gid)
    }
}

/// A group's gid by name (getgrnam_r), or the number itself for a numeric id; nil when there is
/// no such group.
public func groupID(_ name: String) -> gid_t? {
    if let numeric = gid_t(name) { return numeric }
    var entry = group()
    var result: UnsafeMutablePointer<group>?
    return withNSSBuffer { raw in
        getgrnam_r(name, &entry, raw.baseAddress!, raw.count, &result)
    } then: {
        result == nil ? nil : entry.gr_gid
    }
}

/// getgrouplist: `gid` plus every group that lists `user`.
public func groupList(user: String, gid: gid_t) -> [gid_t] {
    var count: Int32 = 32
    while true {
        var groups = [gid_t](repeating: 0, count: Int(count))
        let capacity = count
        if getgrouplist(user, gid, &groups, &count) >= 0 { return Array(groups.prefix(Int(count))) }
        if count <= capacity { count = capacity * 2 }
    }
}

/// Runs an NSS `_r` call with a buffer that grows on ERANGE (a group with thousands of members
/// needs more than the usual 16 KiB), up to 1 MiB; `read` reads the entry while the buffer is
/// still in place (the entry's strings point into it).
private func withNSSBuffer<T>(
    _ call: (UnsafeMutableBufferPointer<CChar>) -> Int32, then read: () -> T?
) -> T? {
    var buffer = [CChar](repeating: 0, count: 16 * 1024)
    while true {
        let (rc, value) = buffer.withUnsafeMutableBufferPointer { raw -> (Int32, T?) in
            let rc = call(raw)
            return (rc, rc == 0 ? read() : nil)
        }
        if rc == ERANGE && buffer.count < 1 << 20 {
            buffer = [CChar](repeating: 0, count: buffer.count * 4)
            continue
        }
        return value
    }
}
