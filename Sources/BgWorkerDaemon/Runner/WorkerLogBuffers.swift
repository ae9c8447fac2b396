// The last output lines of each worker, in memory, for the bus method `Logs` and `bgworkerctl
// status`/`logs`. Written by the output pump's thread, read by bus calls: one lock, held for a
// copy of a few lines at most. Memory is bounded: `log-buffer-lines` lines per configured worker
// (each line at most WorkerOutputPump.maxLineLength bytes); lines of other names are dropped.
//
// Followers (`FollowLogs`, where no journal can be followed): each is the daemon's end of a
// SOCK_SEQPACKET pair, one record per line, sent without blocking under the same lock, so a
// follower's first records are exactly the lines after its backlog. A follower that does not keep
// up loses lines (counted in the next record it gets) and never slows the pump. A backlog larger
// than the socket holds keeps its newest lines (the older ones counted in the first record).
import BgWorkerAPI
import Glibc
import Synchronization

/// One output line: when the daemon read it (µs since the epoch) and its text.
public struct WorkerLogLine: Sendable, Equatable {
    public var time: UInt64
    public var text: String
}

public final class WorkerLogBuffers: Sendable {
    /// A ring of at most `capacity` lines; `next` is where the next line goes once full.
    private struct Ring {
        var capacity: Int
        var lines: [WorkerLogLine] = []
        var next = 0

        mutating func append(_ line: WorkerLogLine) {
            guard capacity > 0 else { return }
            if lines.count < capacity {
                lines.append(line)
            } else {
                lines[next] = line
                next = (next + 1) % capacity
            }
        }

        /// The last `count` lines, oldest first.
        func last(_ count: Int) -> [WorkerLogLine] {
            let ordered = lines.count < capacity ? lines[...] : lines[next...] + lines[..<next]
            return Array(ordered.suffix(count))
        }

        mutating func resize(_ newCapacity: Int) {
            guard newCapacity != capacity else { return }
            lines = last(newCapacity)
            capacity = newCapacity
            next = 0
        }
    }

    /// The daemon's end of one `FollowLogs` socket.
    private struct Follower {
        var fd: Int32
        /// Lines not sent since the last record that reached it (its buffer was full).
        var dropped: UInt32 = 0
    }

    private struct State {
        var rings: [String: Ring] = [:]
        var followers: [String: [Follower]] = [:]
        var followerCount: Int { followers.values.reduce(0) { $0 + $1.count } }
    }

    /// Followers at once, over all workers: each holds an fd of the daemon.
    public static let maxFollowers = 64

    private let state = Mutex(State())

    public init() {}

    deinit {
        state.withLock { $0.followers.values.joined().forEach { close($0.fd) } }
    }

    /// The capacity of each worker's buffer, by name; buffers of other names are dropped, those
    /// that stay keep their newest lines.
    /// The followers of a removed worker are closed: they read the end of the stream.
    public func configure(_ capacities: [String: Int]) {
        state.withLock { state in
            state.rings = state.rings.filter { capacities[$0.key] != nil }
            for (name, capacity) in capacities {
                state.rings[name, default: Ring(capacity: capacity)].resize(max(0, capacity))
            }
            for (name, followers) in state.followers where capacities[name] == nil {
                followers.forEach { close($0.fd) }
                state.followers[name] = nil
            }
        }
    }

    func append(worker: String, text: Substring) {
        let line = WorkerLogLine(time: wallClockMicroseconds(), text: String(text))
        state.withLock { state in
            guard state.rings[worker] != nil else { return }
            state.rings[worker]!.append(line)
            guard var followers = state.followers[worker] else { return }
            var kept: [Follower] = []
            for index in followers.indices where Self.send(line, to: &followers[index]) { kept.append(followers[index]) }
            state.followers[worker] = kept.isEmpty ? nil : kept
        }
    }

    /// The worker's last `count` lines, oldest first (none for a name without a buffer).
    public func last(_ count: Int, of worker: String) -> [WorkerLogLine] {
        state.withLock { $0.rings[worker]?.last(count) ?? [] }
    }

    /// Why a follower was not made.
    public enum FollowError: Error, Equatable {
        /// `maxFollowers` follow already.
        case tooManyFollowers
        case system(call: String, errno: Int32)
    }

    /// A new follower of `worker`: returns the caller's end of a SOCK_SEQPACKET pair that gets the
    /// worker's last `count` lines, then each new one, as records (`encode`). It ends (EOF) when
    /// the worker is removed or the daemon exits; the daemon lets go of it at the first line
    /// after the caller closed its end, or at the next `follow`, which drops followers whose
    /// reader is gone before it counts them.
    public func follow(_ worker: String, last count: Int) throws(FollowError) -> Int32 {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw .system(call: "socketpair", errno: errno)
        }
        let (ours, theirs) = (pair[0], pair[1])
        // The caller only reads; the daemon never waits for the caller.
        _ = shutdown(ours, Int32(SHUT_RD))
        _ = shutdown(theirs, Int32(SHUT_WR))
        _ = fcntl(ours, F_SETFL, fcntl(ours, F_GETFL) | O_NONBLOCK)
        let made: Bool = state.withLock { state in
            for (name, followers) in state.followers {
                let live = followers.filter { follower in
                    var hangUp = pollfd(fd: follower.fd, events: 0, revents: 0)
                    guard poll(&hangUp, 1, 0) > 0, hangUp.revents & Int16(POLLHUP | POLLERR) != 0 else { return true }
                    close(follower.fd)
                    return false
                }
                state.followers[name] = live.isEmpty ? nil : live
            }
            guard state.followerCount < Self.maxFollowers else { return false }
            var follower = Follower(fd: ours)
            // `send` closes the follower's fd when it fails for good: then it is not kept.
            guard Self.sendBacklog(state.rings[worker]?.last(count) ?? [], to: &follower, readBackFrom: theirs) else { return true }
            state.followers[worker, default: []].append(follower)
            return true
        }
        guard made else {
            close(ours)
            close(theirs)
            throw .tooManyFollowers
        }
        return theirs
    }

    /// Sends the backlog, oldest first. A socket holds far fewer records than a backlog may have
    /// lines (the kernel charges ~800 bytes per packet: ~270 short lines, ~50 of 3 KB), and the
    /// newest are the ones a reader asks for: a pass that fills the socket is read back from the
    /// caller's end (not handed out yet) and the newest lines that fitted are sent again, the
    /// first counting the older ones as not sent. False when the reader is gone (fd closed).
    private static func sendBacklog(_ lines: [WorkerLogLine], to follower: inout Follower, readBackFrom theirs: Int32) -> Bool {
        var start = 0
        // Newer lines may be longer than those that fitted: a pass may fit fewer; the last pass
        // counts what does not fit as a reader that fell behind would.
        for pass in 0..<3 {
            follower.dropped = UInt32(clamping: start)
            var fitted = 0
            sending: for line in lines[start...] {
                switch trySend(line, to: &follower) {
                case .sent: fitted += 1
                case .gone: return false
                case .full: if pass < 2 { break sending }
                }
            }
            if pass == 2 || start + fitted == lines.count { return true }
            var scratch: UInt8 = 0
            // MSG_TRUNC: each call discards one whole record whatever its size; -1 (EAGAIN) once empty.
            while retryOnInterrupt({ recv(theirs, &scratch, 1, Int32(MSG_DONTWAIT | MSG_TRUNC)) }) > 0 {}
            start = lines.count - fitted
        }
        return true
    }

    /// Sends one record; false when the follower's reader is gone (its fd is then closed).
    private static func send(_ line: WorkerLogLine, to follower: inout Follower) -> Bool {
        trySend(line, to: &follower) != .gone
    }

    private enum SendResult { case sent, full, gone }

    /// One record without waiting: sent; the socket full (the line counted in `dropped`); or the
    /// reader gone, its fd then closed.
    private static func trySend(_ line: WorkerLogLine, to follower: inout Follower) -> SendResult {
        let record = FollowedLogRecord(time: line.time, dropped: follower.dropped, text: line.text).encoded
        let sent = record.withUnsafeBytes { raw in
            retryOnInterrupt { Glibc.send(follower.fd, raw.baseAddress, raw.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
        }
        if sent >= 0 {
            follower.dropped = 0
            return .sent
        }
        if errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS {
            follower.dropped &+= 1
            return .full
        }
        close(follower.fd)
        return .gone
    }
}
