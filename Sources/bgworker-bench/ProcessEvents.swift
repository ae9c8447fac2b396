// The kernel's process events (the netlink proc connector): when a child of a watched process
// forked, exec'd and exited, each with the kernel's own CLOCK_MONOTONIC timestamp. This is how the
// benchmark knows when a worker "has exec'd" without asking the daemon, and the same clock and
// the same event time the floor's own spawns, so both sides are measured alike.
import Foundation
import Glibc
import Synchronization
import TestSupport

struct ProcessEventError: Error, CustomStringConvertible {
    var description: String
}

/// A process-event listener. Needs CAP_NET_ADMIN in the initial namespaces (root here);
/// `start()` throws otherwise and the caller falls back to what the bus says.
final class ProcessEvents: Sendable {
    struct Exec: Sendable {
        var pid: pid_t
        /// The kernel's CLOCK_MONOTONIC nanoseconds of the exec.
        var timestamp: UInt64
    }

    private struct Waiter {
        var parent: pid_t
        var after: UInt64
        var continuation: CheckedContinuation<Exec, any Error>
    }

    private struct State {
        var watchedParents: Set<pid_t> = []
        /// child -> parent, for children of watched parents.
        var parentOf: [pid_t: pid_t] = [:]
        var execsByParent: [pid_t: [Exec]] = [:]
        var exits: [pid_t: UInt64] = [:]
        var waiters: [UInt64: Waiter] = [:]
        var exitWaiters: [UInt64: (pid: pid_t, continuation: CheckedContinuation<UInt64?, Never>)] = [:]
        var nextID: UInt64 = 0
        var lost = 0
        /// Parents whose children's exits are only counted (`countExits(ofChildrenOf:)`): nothing
        /// is kept per child once it is gone, so a soak of millions of spawns stays small.
        var countedParents: Set<pid_t> = []
        var exitCounts: [pid_t: Int] = [:]
    }

    private let fd: Int32
    private let state = Mutex(State())

    private init(fd: Int32) { self.fd = fd }

    /// Opens the connector, subscribes, and starts the reading thread.
    static func start() throws -> ProcessEvents {
        let netlinkConnector: Int32 = 11
        let procIndex: UInt32 = 1  // CN_IDX_PROC
        let fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkConnector)
        guard fd >= 0 else { throw ProcessEventError(description: "netlink connector socket: \(String(cString: strerror(errno)))") }
        // The machine may be busy (other builds): a large buffer so no event of ours is dropped.
        var size: Int32 = 16 << 20
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4)
        }
        // struct sockaddr_nl { u16 family; u16 pad; u32 pid; u32 groups; }
        var address = [UInt8](repeating: 0, count: 12)
        Self.put(UInt16(AF_NETLINK), at: 0, in: &address)
        Self.put(procIndex, at: 8, in: &address)
        let bound = address.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 12) }
        guard bound == 0 else {
            close(fd)
            throw ProcessEventError(description: "netlink connector bind: \(String(cString: strerror(errno)))")
        }
        // nlmsghdr (16) + cn_msg (20) + PROC_CN_MCAST_LISTEN (4)
        var message = [UInt8](repeating: 0, count: 40)
        Self.put(UInt32(40), at: 0, in: &message)
        Self.put(UInt16(3), at: 4, in: &message)  // NLMSG_DONE
        Self.put(UInt32(getpid()), at: 12, in: &message)
        Self.put(procIndex, at: 16, in: &message)  // cn_msg.id.idx
        Self.put(UInt32(1), at: 20, in: &message)  // cn_msg.id.val = CN_VAL_PROC
        Self.put(UInt16(4), at: 32, in: &message)  // cn_msg.len
        Self.put(UInt32(1), at: 36, in: &message)  // PROC_CN_MCAST_LISTEN
        var kernel = [UInt8](repeating: 0, count: 12)
        Self.put(UInt16(AF_NETLINK), at: 0, in: &kernel)
        let sent = message.withUnsafeBytes { m in
            kernel.withUnsafeBytes { k in
                sendto(fd, m.baseAddress, 40, 0, k.baseAddress!.assumingMemoryBound(to: sockaddr.self), 12)
            }
        }
        guard sent == 40 else {
            close(fd)
            throw ProcessEventError(description: "proc connector subscribe: \(String(cString: strerror(errno)))")
        }
        let events = ProcessEvents(fd: fd)
        let thread = Thread { events.readLoop() }
        thread.name = "proc-events"
        thread.start()
        return events
    }

    /// Records forks, execs and exits of the children of `parent` from now on.
    /// Its children that exist already count as known children (their exits are reported).
    func watch(parent: pid_t) {
        let existing = childPids(of: parent)
        state.withLock { s in
            s.watchedParents.insert(parent)
            for child in existing where s.parentOf[child] == nil { s.parentOf[child] = parent }
        }
    }

    /// Counts the exits of the children of `parent` from now on, keeping nothing else about them
    /// (`exitCount(ofChildrenOf:)`).
    func countExits(ofChildrenOf parent: pid_t) {
        let existing = childPids(of: parent)
        state.withLock { s in
            s.countedParents.insert(parent)
            s.exitCounts[parent] = 0
            for child in existing where s.parentOf[child] == nil { s.parentOf[child] = parent }
        }
    }

    /// How many children of a counted parent have exited so far.
    func exitCount(ofChildrenOf parent: pid_t) -> Int { state.withLock { $0.exitCounts[parent] ?? 0 } }

    /// Events the kernel dropped because our buffer was full (ENOBUFS); figures are suspect if > 0.
    var lostEvents: Int { state.withLock { $0.lost } }

    /// The first exec of a child of `parent` whose timestamp is after `after`; waits for it.
    func exec(childOf parent: pid_t, after: UInt64, timeout: Duration = .seconds(10)) async throws -> Exec {
        let id = state.withLock { s -> UInt64 in s.nextID += 1; return s.nextID }
        return try await withDeadline(timeout, orThrow: {
            ProcessEventError(description: "no exec of a child of \(parent) within \(timeout)")
        }) {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    let found = self.state.withLock { s -> Exec? in
                        if let e = s.execsByParent[parent]?.first(where: { $0.timestamp > after }) { return e }
                        s.waiters[id] = Waiter(parent: parent, after: after, continuation: continuation)
                        return nil
                    }
                    if let found { continuation.resume(returning: found) }
                }
            } onCancel: {
                let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
                waiter?.continuation.resume(throwing: CancellationError())
            }
        }
    }

    /// When the kernel reported the exit of `pid` (a child of a watched parent); waits for the
    /// report (the reading thread may lag behind the exit) up to `timeout`, then nil.
    func exitTime(of pid: pid_t, timeout: Duration = .seconds(5)) async -> UInt64? {
        let id = state.withLock { s -> UInt64 in s.nextID += 1; return s.nextID }
        return await withTaskGroup(of: UInt64?.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let known = self.state.withLock { s -> UInt64?? in
                            if let at = s.exits[pid] { return .some(at) }
                            if s.parentOf[pid] == nil { return .some(nil) }  // not a child we watch
                            s.exitWaiters[id] = (pid, continuation)
                            return nil
                        }
                        if let known { continuation.resume(returning: known) }
                    }
                } onCancel: {
                    let waiter = self.state.withLock { $0.exitWaiters.removeValue(forKey: id) }
                    waiter?.continuation.resume(returning: nil)
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// Forgets what was recorded (between phases, to keep lookups short).
    func reset() {
        state.withLock {
            $0.execsByParent = [:]
            $0.exits = [:]
        }
    }

    // MARK: - Reading

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ENOBUFS { state.withLock { $0.lost += 1 }; continue }
                return
            }
            var offset = 0
            while offset + 16 <= n {
                let length = Int(Self.u32(buffer, offset))
                guard length >= 16, offset + length <= n else { break }
                if length >= 36 + 24 { handle(buffer, at: offset + 36) }
                offset += (length + 3) & ~3
            }
        }
    }

    private func handle(_ b: [UInt8], at o: Int) {
        let what = Self.u32(b, o)
        let timestamp = Self.u64(b, o + 8)
        switch what {
        case 0x1:  // PROC_EVENT_FORK
            let parentTgid = pid_t(bitPattern: Self.u32(b, o + 20))
            let childPid = pid_t(bitPattern: Self.u32(b, o + 24))
            let childTgid = pid_t(bitPattern: Self.u32(b, o + 28))
            guard childPid == childTgid else { return }  // a new thread, not a process
            state.withLock { s in
                if s.watchedParents.contains(parentTgid) || s.countedParents.contains(parentTgid) {
                    s.parentOf[childPid] = parentTgid
                }
            }
        case 0x2:  // PROC_EVENT_EXEC
            let tgid = pid_t(bitPattern: Self.u32(b, o + 20))
            let woken = state.withLock { s -> [(CheckedContinuation<Exec, any Error>, Exec)] in
                guard let parent = s.parentOf[tgid], !s.countedParents.contains(parent) else { return [] }
                let exec = Exec(pid: tgid, timestamp: timestamp)
                s.execsByParent[parent, default: []].append(exec)
                let ready = s.waiters.filter { $0.value.parent == parent && $0.value.after < timestamp }
                for id in ready.keys { s.waiters[id] = nil }
                return ready.values.map { ($0.continuation, exec) }
            }
            for (continuation, exec) in woken { continuation.resume(returning: exec) }
        case 0x8000_0000:  // PROC_EVENT_EXIT
            let pid = pid_t(bitPattern: Self.u32(b, o + 16))
            let tgid = pid_t(bitPattern: Self.u32(b, o + 20))
            guard pid == tgid else { return }
            let woken = state.withLock { s -> [CheckedContinuation<UInt64?, Never>] in
                guard let parent = s.parentOf[tgid] else { return [] }
                if s.countedParents.contains(parent) {
                    s.exitCounts[parent, default: 0] += 1
                    s.parentOf[tgid] = nil
                    return []
                }
                s.exits[tgid] = timestamp
                let ready = s.exitWaiters.filter { $0.value.pid == tgid }
                for id in ready.keys { s.exitWaiters[id] = nil }
                return ready.values.map(\.continuation)
            }
            for continuation in woken { continuation.resume(returning: timestamp) }
        default:
            return
        }
    }

    // MARK: - Bytes (host order: netlink is host-endian)

    private static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { raw in
            for (i, byte) in raw.enumerated() { bytes[offset + i] = byte }
        }
    }

    private static func u32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
    }

    private static func u64(_ b: [UInt8], _ o: Int) -> UInt64 {
        UInt64(u32(b, o)) | UInt64(u32(b, o + 4)) << 32
    }
}
