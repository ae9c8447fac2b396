// Maintenance mode's inhibitors (the contract's `Inhibit`, as logind's): each is a pipe whose
// write end went to the caller and whose read end the supervisor watches on its loop. When every
// copy of the write end is closed (by its holder, its death, or the exit of a child that
// inherited it), the read end reports EOF/HUP and the inhibitor is gone. See docs/design.md.
import BgWorkerCore
import CShims
import DBus
import Glibc

/// One inhibitor: who asked, and the read end the loop watches.
struct Inhibitor: Sendable {
    var id: UInt64
    var who: String
    var why: String
    var uid: UInt32
    var pid: UInt32
    /// µs since the epoch (`ListInhibitors`).
    var since: UInt64
    /// The read end (close-on-exec, non-blocking), owned by the table until `remove`.
    var readFD: Int32
    var registration: LoopRegistration?

    var hold: MaintenanceHold { MaintenanceHold(who: who, why: why) }
}

/// The inhibitors held now, oldest first. Owned by the supervisor (loop-isolated).
struct InhibitorTable {
    private(set) var held: [Inhibitor] = []
    private var nextID: UInt64 = 1

    /// At most this many at once, so that a client cannot take every fd of the daemon: 4096, or a
    /// quarter of the soft RLIMIT_NOFILE when that is lower (the rest is for workers' pidfds and
    /// output pipes and the bus).
    let limit: Int

    init() {
        var limits = rlimit()
        let soft = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 ? limits.rlim_cur : 1024
        limit = Int(min(4096, soft / 4))
    }

    /// The longest `who` or `why` accepted (they show in every held worker's state reason).
    static let maxTextLength = 256

    /// The oldest inhibitor's hold, nil when none (the fleet's `maintenance` event).
    var oldestHold: MaintenanceHold? { held.first?.hold }

    var isEmpty: Bool { held.isEmpty }

    /// A new pipe: returns the inhibitor (read end kept, not yet registered) and the write end
    /// for the caller. Both ends are close-on-exec (a spawn between the two must not leak them
    /// into a worker; workers also get a clean fd set, PreparedLaunch's close_range).
    mutating func make(who: String, why: String, uid: UInt32, pid: UInt32, since: UInt64) throws(DBusError) -> (Inhibitor, UnixFD) {
        guard who.utf8.count <= Self.maxTextLength, why.utf8.count <= Self.maxTextLength else {
            throw DBusError.invalidArgs("who and why may have at most \(Self.maxTextLength) bytes each")
        }
        guard held.count < limit else {
            throw DBusError(
                Self.limitsExceeded,
                "\(held.count) inhibitors are held already, the most bgworkerd allows (4096, or a quarter of its RLIMIT_NOFILE)")
        }
        var ends: [Int32] = [-1, -1]
        guard _bgw_pipe_cloexec(&ends) == 0 else {
            let code = errno
            let name = code == EMFILE || code == ENFILE ? Self.limitsExceeded : DBusError.Name.failed
            throw DBusError(name, "cannot make the inhibitor's pipe: \(errnoText(code))")
        }
        // Only the read end is non-blocking (the flag belongs to the open file, which the caller
        // shares for the write end): a drain of what a holder wrote never blocks the loop.
        _ = fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK)
        let inhibitor = Inhibitor(id: nextID, who: who, why: why, uid: uid, pid: pid, since: since, readFD: ends[0])
        nextID += 1
        return (inhibitor, UnixFD(taking: ends[1]))
    }

    mutating func add(_ inhibitor: Inhibitor) {
        held.append(inhibitor)
    }

    /// Takes the inhibitor out; the caller unregisters and closes its read end.
    mutating func remove(_ id: UInt64) -> Inhibitor? {
        guard let index = held.firstIndex(where: { $0.id == id }) else { return nil }
        return held.remove(at: index)
    }

    static let limitsExceeded = "org.freedesktop.DBus.Error.LimitsExceeded"

    /// Whether every write end is closed: reads what a holder may have written (it means
    /// nothing) until EOF (closed) or EAGAIN (still held). Bounded, so a holder that writes
    /// without end cannot keep the loop here.
    static func writersGone(_ fd: Int32, events: UInt32) -> Bool {
        if events & (EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { return true }
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<16 {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count == 0 { return true }
            if count < 0 { return errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK }
        }
        return false
    }
}
