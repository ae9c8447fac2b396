// Maintenance mode's inhibitors (the contract's `Inhibit`, as logind's): each is a FIFO (a pipe
// without a runtime folder) whose write end went to the caller and whose read end the supervisor
// watches on its loop. When every copy of the write end is closed (by its holder, its death, or
// the exit of a child that inherited it), the read end reports EOF/HUP and the inhibitor is gone.
// FIFOs in the runtime folder, with who/why/uid/pid/since beside them, let a restarted daemon
// take its inhibitors back (logind's way). See docs/design.md.
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
    /// The registrations are set by the supervisor (`watch`).
    var held: [Inhibitor] = []
    private var nextID: UInt64 = 1
    /// Where the FIFOs and their descriptions live (`$RUNTIME_DIRECTORY/inhibitors`); nil: plain
    /// pipes, forgotten when the daemon ends.
    let directory: String?

    /// At most this many at once, so that a client cannot take every fd of the daemon: 4096, or a
    /// quarter of the soft RLIMIT_NOFILE when that is lower (the rest is for workers' pidfds and
    /// output pipes and the bus).
    let limit: Int

    init(directory: String? = nil) {
        self.directory = directory
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
        let id = nextID
        var persisted = directory != nil
        let ends: (read: Int32, write: Int32)
        do {
            ends = try Self.openEnds(directory.map { Self.fifoPath($0, id) })
        } catch where persisted && error.name != Self.limitsExceeded {
            // No FIFO (the runtime folder is gone or read-only): a pipe still holds maintenance,
            // only not across a restart of the daemon.
            persisted = false
            ends = try Self.openEnds(nil)
        }
        nextID += 1
        let inhibitor = Inhibitor(id: id, who: who, why: why, uid: uid, pid: pid, since: since, readFD: ends.read)
        if persisted, let directory { Self.describe(inhibitor, in: directory) }
        return (inhibitor, UnixFD(taking: ends.write))
    }

    /// The two ends: of a new FIFO at `path`, else of a pipe. Only the read end is non-blocking
    /// (the flag belongs to the open file, which the caller shares for the write end), so a drain
    /// of what a holder wrote never blocks the loop.
    private static func openEnds(_ path: String?) throws(DBusError) -> (Int32, Int32) {
        func failure(_ what: String) -> DBusError {
            let code = errno
            let name = code == EMFILE || code == ENFILE ? limitsExceeded : DBusError.Name.failed
            return DBusError(name, "cannot make the inhibitor's \(what): \(errnoText(code))")
        }
        guard let path else {
            var ends: [Int32] = [-1, -1]
            guard _bgw_pipe_cloexec(&ends) == 0 else { throw failure("pipe") }
            _ = fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK)
            return (ends[0], ends[1])
        }
        unlink(path)
        guard mkfifo(path, 0o600) == 0 else { throw failure("FIFO \(path)") }
        let readFD = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard readFD >= 0 else {
            let error = failure("FIFO \(path)")
            unlink(path)
            throw error
        }
        // Never blocks: the read end is open.
        let writeFD = open(path, O_WRONLY | O_CLOEXEC)
        guard writeFD >= 0 else {
            let error = failure("FIFO \(path)")
            close(readFD)
            unlink(path)
            throw error
        }
        return (readFD, writeFD)
    }

    mutating func add(_ inhibitor: Inhibitor) {
        held.append(inhibitor)
    }

    /// Takes the inhibitor out (and its files); the caller unregisters and closes its read end.
    mutating func remove(_ id: UInt64) -> Inhibitor? {
        guard let index = held.firstIndex(where: { $0.id == id }) else { return nil }
        if let directory {
            unlink(Self.fifoPath(directory, id))
            unlink(Self.descriptionPath(directory, id))
        }
        return held.remove(at: index)
    }

    // MARK: - Across daemon restarts

    static func fifoPath(_ directory: String, _ id: UInt64) -> String { "\(directory)/\(id).fifo" }
    static func descriptionPath(_ directory: String, _ id: UInt64) -> String { "\(directory)/\(id).inhibitor" }

    /// Writes `uid pid since` and who and why (one line each, `\`, LF and CR escaped) beside the
    /// FIFO, by rename so a reader never sees half of it. A failure only costs the inhibitor's
    /// survival of a daemon restart (its FIFO without a description is dropped then).
    private static func describe(_ inhibitor: Inhibitor, in directory: String) {
        // By scalar, not Character: a CR before the line's LF would make one "\r\n" Character
        // (no line break for the parser), and a combining mark after an escape's `n` would fuse
        // with it (no escape).
        func escaped(_ text: String) -> String {
            var out = String.UnicodeScalarView()
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
                case "\n": out.append(contentsOf: "\\n".unicodeScalars)
                case "\r": out.append(contentsOf: "\\r".unicodeScalars)
                default: out.append(scalar)
                }
            }
            return String(out)
        }
        let text = "\(inhibitor.uid) \(inhibitor.pid) \(inhibitor.since)\n\(escaped(inhibitor.who))\n\(escaped(inhibitor.why))\n"
        let path = descriptionPath(directory, inhibitor.id)
        let temporary = path + ".new"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        if written == bytes.count { rename(temporary, path) } else { unlink(temporary) }
    }

    /// The description written by `describe`, nil when it does not read as one.
    static func parseDescription(_ text: String, id: UInt64) -> (uid: UInt32, pid: UInt32, since: UInt64, who: String, why: String)? {
        // By scalar, as `describe` escapes.
        func unescaped(_ line: String) -> String {
            var out = String.UnicodeScalarView()
            var escaping = false
            for scalar in line.unicodeScalars {
                if escaping {
                    out.append(scalar == "n" ? "\n" : scalar == "r" ? "\r" : scalar)
                    escaping = false
                } else if scalar == "\\" {
                    escaping = true
                } else {
                    out.append(scalar)
                }
            }
            return String(out)
        }
        let lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false)
            .map { String(String.UnicodeScalarView($0)) }
        guard lines.count >= 3 else { return nil }
        let numbers = lines[0].split(separator: " ")
        guard numbers.count == 3, let uid = UInt32(numbers[0]), let pid = UInt32(numbers[1]), let since = UInt64(numbers[2])
        else { return nil }
        return (uid, pid, since, unescaped(lines[1]), unescaped(lines[2]))
    }

    /// Takes back what a previous daemon left in `directory`, oldest first: for each FIFO with its
    /// description, the read end is opened, then a write end opened and closed at once, so that
    /// the read end reports HUP when no holder is left (a FIFO that never had a writer since its
    /// read end was opened reports none); the caller registers them with the loop. Anything else
    /// there is removed. Blocking file work: call it off the loop. Returns what it dropped, for the log.
    mutating func load() -> [String] {
        guard let directory else { return [] }
        // The runtime folder itself may not exist yet (the systemd runner keeps nothing else there).
        if let slash = directory.lastIndex(of: "/"), slash != directory.startIndex {
            _ = mkdir(String(directory[..<slash]), 0o755)
        }
        guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
            return ["cannot make \(directory): \(errnoText(errno)); inhibitors will not outlive a restart of bgworkerd"]
        }
        var dropped: [String] = []
        let names = directoryEntryNames(directory) ?? []
        var found: [Inhibitor] = []
        for name in names where name.hasSuffix(".inhibitor") {
            guard let id = UInt64(name.dropLast(".inhibitor".count)) else { continue }
            let fifo = Self.fifoPath(directory, id)
            guard case .success(let bytes) = readWholeFile(Self.descriptionPath(directory, id)),
                  let d = Self.parseDescription(String(decoding: bytes, as: UTF8.self), id: id) else { continue }
            let readFD = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
            guard readFD >= 0 else {
                dropped.append("\(fifo): \(errnoText(errno))")
                continue
            }
            var status = stat()
            guard fstat(readFD, &status) == 0, status.st_mode & S_IFMT == S_IFIFO else {
                close(readFD)
                dropped.append("\(fifo): not a FIFO")
                continue
            }
            let probe = open(fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
            if probe >= 0 { close(probe) }
            found.append(Inhibitor(id: id, who: d.who, why: d.why, uid: d.uid, pid: d.pid, since: d.since, readFD: readFD))
        }
        found.sort { ($0.since, $0.id) < ($1.since, $1.id) }
        held = found
        nextID = (found.map(\.id).max() ?? 0) + 1
        // What is not one of those: files of inhibitors whose description was lost, leftovers.
        let kept = Set(found.flatMap { ["\($0.id).fifo", "\($0.id).inhibitor"] })
        for name in directoryEntryNames(directory) ?? [] where !kept.contains(name) {
            unlink("\(directory)/\(name)")
        }
        return dropped
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
