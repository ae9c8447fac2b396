// Why this file exists: PR_SET_PDEATHSIG kills a worker when the daemon dies (even by SIGKILL),
// but not what the worker started: its children survive in the worker's process group, orphaned.
// So every live worker's process group is written down, and the next daemon kills the groups it
// finds there that still exist before it starts anything: it never finds an old copy running.
//
// Two rules make that safe (issues 8 and 17, docs/process-runner.md):
// - A group is recorded before its program runs: the spawned child writes its own pid (= its
//   group) into a slot of the file right after setpgid, long before execve (`_bgw_spawn`).
// - Only a dead daemon's groups are killed: a daemon holds an flock on the file for its life, so
//   a second daemon on the same runtime directory cannot take it and refuses to start, naming
//   the holder (whose pid is in the header).
//
// Layout (native byte order): a 32-byte header, then 8-byte slots, one per running worker.
//   header: magic "BGWPGRP\0", version u32 (2), slot size u32 (8), owner pid i32, owner session
//           i32, generation u32, unused u32
//   slot:   pgid i32 (0: free), generation u32
// A new owner kills the groups of the slots whose generation is the header's (what the previous
// owner recorded), then starts the file afresh with the next generation. A child of a dead owner
// that was still on its way to exec (it fails its parent check and exits, never running the
// program) may write its slot after that; its old generation marks it stale.
// The session id is 0 when the session's leader lives outside our PID namespace (a daemon started
// by `unshare --pid --fork`, or in some containers): /proc then says 0 for every such process, so
// 0 is recorded and matched like any other id.
import CShims
import Glibc

/// Why the record of process groups cannot be used.
struct ProcessGroupRecordError: Error, Sendable, CustomStringConvertible {
    enum Reason: Sendable, Equatable {
        /// Another live process holds the record's lock; `holder` is the pid its header names
        /// (nil when it names none, or a pid that is gone: the holder may live in another PID
        /// namespace).
        case inUse(holder: Int32?)
        /// A system call on the file failed.
        case system(call: String, errno: Int32)
    }

    /// The record file, e.g. `/run/bgworker/process-groups`.
    var path: String
    var reason: Reason

    /// The runtime directory the record is in.
    var directory: String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    var description: String {
        switch reason {
        case .inUse(let holder):
            let who = holder.map { "bgworkerd pid \($0)" } ?? "another process"
            return "the runtime directory \(directory) is in use by another daemon (\(who) holds the lock "
                + "on \(path)): one bgworkerd per runtime directory. To run a second daemon, give it its own "
                + "RUNTIME_DIRECTORY, its own [daemon] state-directory and its own bus (--bus ADDRESS); see "
                + "docs/process-runner.md"
        case .system(let call, let errno):
            return "\(call) \(path): \(errnoText(errno))"
        }
    }
}

/// The runtime file of live workers' process groups, owned (locked) by this runner for its life.
/// Used on one thread at a time: made by the runner's creator, then only on its monitor thread.
final class ProcessGroupRecord {
    static let headerSize = 32
    static let slotSize = 8
    static let version: UInt32 = 2
    static let magic: [UInt8] = Array("BGWPGRP".utf8) + [0]
    /// Slots made at the start and added at the first growth; the file doubles after that.
    static let initialSlots = 64

    let path: String
    /// Written into each slot by the child: the mark of this owner's entries.
    let generation: UInt32
    /// The groups of the previous owner this record killed when it was taken over.
    let killedLeftovers: [Int32]
    private var fd: Int32
    private var capacity = 0
    /// Free slot indexes; the last one is handed out next.
    private var free: [Int] = []

    /// Opens (creating) the file at `path`, takes its lock, kills what a dead previous owner
    /// recorded (waiting up to `leftoverDeadline` for it to be gone) and starts the file afresh.
    /// Creates the file's directory (0755) when it is missing, as when the daemon runs by hand
    /// without systemd's `RuntimeDirectory=`.
    /// - Parameter lockWait: how long to wait for the lock when its recorded holder is gone
    ///   (see `waitForLock`); a live holder is refused at once.
    init(
        path: String, leftoverDeadline: Duration = .seconds(5), lockWait: Duration = .seconds(5)
    ) throws(ProcessGroupRecordError) {
        var fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 && errno == ENOENT, let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            _ = mkdir(String(path[..<slash]), 0o755)
            fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        }
        guard fd >= 0 else { throw ProcessGroupRecordError(path: path, reason: .system(call: "open", errno: errno)) }
        do {
            (generation, killedLeftovers) = try Self.takeOver(
                fd, path: path, leftoverDeadline: leftoverDeadline, lockWait: lockWait)
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
        self.path = path
        capacity = Self.initialSlots
        free = (0..<Self.initialSlots).reversed()
    }

    /// Takes the lock, kills what the previous owner recorded, and writes a fresh header (the
    /// next generation) and `initialSlots` empty slots. Returns that generation and the groups
    /// killed.
    private static func takeOver(
        _ fd: Int32, path: String, leftoverDeadline: Duration, lockWait: Duration
    ) throws(ProcessGroupRecordError) -> (UInt32, [Int32]) {
        func failure(_ call: String, _ code: Int32 = errno) -> ProcessGroupRecordError {
            ProcessGroupRecordError(path: path, reason: .system(call: call, errno: code))
        }
        if retryOnInterrupt({ flock(fd, LOCK_EX | LOCK_NB) }) != 0 {
            guard errno == EWOULDBLOCK else { throw failure("flock") }
            if let holder = readHeader(fd)?.owner, holder > 0, isLive(holder) {
                throw ProcessGroupRecordError(path: path, reason: .inUse(holder: holder))
            }
            guard try waitForLock(fd, timeout: lockWait, path: path) else {
                let holder = (readHeader(fd)?.owner).flatMap { $0 > 0 && isLive($0) ? $0 : nil }
                throw ProcessGroupRecordError(path: path, reason: .inUse(holder: holder))
            }
        }

        let previous = readRecord(fd)
        if previous.header != nil {
            // A daemon that looks now finds us, not the dead owner, while we clean up (the
            // header's owner field).
            var me = getpid()
            _ = pwrite(fd, &me, 4, 16)
        }
        let killed = kill(previous.groups, deadline: leftoverDeadline)

        // Afresh: no slot of the old owner is left to be taken for ours. A crash before the
        // header is written leaves an empty file, whose leftovers were killed above.
        let next = (previous.header?.generation ?? 0) &+ 1
        let generation = next == 0 ? 1 : next
        guard retryOnInterrupt({ ftruncate(fd, 0) }) == 0 else { throw failure("ftruncate") }
        var bytes = magic
        for field in [version, UInt32(slotSize), UInt32(bitPattern: getpid()), UInt32(bitPattern: getsid(0)),
                      generation, 0] {
            withUnsafeBytes(of: field) { bytes += $0 }
        }
        // Written, not left as a hole: see `grow`.
        bytes += [UInt8](repeating: 0, count: initialSlots * slotSize)
        let written = bytes.withUnsafeBytes { raw in retryOnInterrupt { pwrite(fd, raw.baseAddress, raw.count, 0) } }
        guard written == bytes.count else { throw failure("pwrite", written < 0 ? errno : ENOSPC) }
        return (generation, killed)
    }

    deinit { if fd >= 0 { close(fd) } }

    /// A free slot for a spawn (the file grows when none is left). Give it to `_bgw_spawn` at
    /// `offset(of:)`, and back with `clear` once the worker is reaped or the spawn failed.
    func claimSlot() throws(SystemCallError) -> Int {
        if free.isEmpty { try grow() }
        return free.removeLast()
    }

    /// The slot's position in the file.
    func offset(of slot: Int) -> off_t { off_t(Self.headerSize + slot * Self.slotSize) }

    /// The descriptor the child writes its slot through (close-on-exec: no worker keeps it).
    var descriptor: Int32 { fd }

    /// Empties the slot (its group is gone) and makes it free again. A write that fails leaves a
    /// stale entry: the next owner would kill that group only if it lived, in our session.
    func clear(_ slot: Int) {
        var zero: UInt64 = 0
        _ = pwrite(fd, &zero, Self.slotSize, offset(of: slot))
        free.append(slot)
    }

    /// The runner ended with no worker left: drops the empty slots and lets go of the file (and
    /// its lock), so that another runner may take it over.
    func finish() {
        guard fd >= 0 else { return }
        _ = ftruncate(fd, off_t(Self.headerSize))
        close(fd)
        fd = -1
        free = []
        capacity = 0
    }

    /// Adds slots (64, then as many as there are), written as zeros rather than left as a hole by
    /// ftruncate: on tmpfs a hole gets its page only when written, and the child's write into
    /// its slot must not be the one that meets a full file system.
    private func grow() throws(SystemCallError) {
        let added = max(Self.initialSlots, capacity)
        let zeros = [UInt8](repeating: 0, count: added * Self.slotSize)
        let start = offset(of: capacity)
        let written = zeros.withUnsafeBytes { raw in retryOnInterrupt { pwrite(fd, raw.baseAddress, raw.count, start) } }
        guard written == zeros.count else {
            throw SystemCallError(call: "pwrite (growing) \(path)", errno: written < 0 ? errno : ENOSPC)
        }
        free += (capacity..<(capacity + added)).reversed()
        capacity += added
    }

    // MARK: reading a previous owner's record

    struct Header {
        var owner: Int32
        var session: Int32
        var generation: UInt32
    }

    /// The header, when the file starts with one.
    static func readHeader(_ fd: Int32) -> Header? {
        var bytes = [UInt8](repeating: 0, count: headerSize)
        let n = bytes.withUnsafeMutableBytes { raw in retryOnInterrupt { pread(fd, raw.baseAddress, raw.count, 0) } }
        guard n == headerSize else { return nil }
        return parseHeader(bytes[...])
    }

    static func parseHeader(_ bytes: ArraySlice<UInt8>) -> Header? {
        guard bytes.count >= headerSize, bytes.prefix(8).elementsEqual(magic) else { return nil }
        func field(_ at: Int) -> UInt32 {
            bytes.dropFirst(at).prefix(4).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        }
        guard field(8) == version, field(12) == UInt32(slotSize) else { return nil }
        return Header(owner: Int32(bitPattern: field(16)), session: Int32(bitPattern: field(20)), generation: field(24))
    }

    /// What a previous owner left: its header, and the groups to kill with their session. A file
    /// without our header is read as the text of daemons before it (`PGID SID` lines); anything
    /// else in it is ignored.
    static func readRecord(_ fd: Int32) -> (header: Header?, groups: [(pgid: Int32, session: Int32)]) {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let offset = off_t(bytes.count)
            let n = chunk.withUnsafeMutableBytes { raw in
                retryOnInterrupt { pread(fd, raw.baseAddress, raw.count, offset) }
            }
            if n <= 0 { break }
            bytes += chunk[0..<n]
            // Worth reading: 2^22 slots (pid_max) or a text file of old daemons' lines.
            if bytes.count > headerSize + slotSize << 22 { break }
        }
        return parse(bytes)
    }

    static func parse(_ bytes: [UInt8]) -> (header: Header?, groups: [(pgid: Int32, session: Int32)]) {
        guard let header = parseHeader(bytes[...]) else { return (nil, parseText(bytes)) }
        var groups: [(pgid: Int32, session: Int32)] = []
        var seen = Set<Int32>()
        var at = headerSize
        while at + slotSize <= bytes.count {
            let (pgid, generation) = bytes[at..<(at + slotSize)].withUnsafeBytes {
                ($0.loadUnaligned(as: Int32.self), $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            }
            if pgid > 1, generation == header.generation, seen.insert(pgid).inserted {
                groups.append((pgid, header.session))
            }
            at += slotSize
        }
        return (header, groups)
    }

    /// The text format of daemons before the slots: one `PGID SID` line per group.
    static func parseText(_ bytes: [UInt8]) -> [(pgid: Int32, session: Int32)] {
        String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count == 2, let pgid = Int32(fields[0]), let session = Int32(fields[1]),
                  pgid > 1, session >= 0 else { return nil }
            return (pgid, session)
        }
    }

    /// Whether `pid` runs (a zombie has exited: its files, and its locks, are gone).
    static func isLive(_ pid: Int32) -> Bool {
        if pid == getpid() { return true }
        guard let state = ProcStat.read(pid: pid)?.state else { return false }
        return state != "Z" && state != "X"
    }

    /// Waits up to `timeout` for the lock (`flock` itself has no timeout, so a thread of its own
    /// blocks in it). For when the recorded holder is gone yet the lock is taken: a clone of the
    /// dead daemon's spawn shares the locked file description until it executes (the fd is
    /// close-on-exec) or exits, which it does within microseconds (its parent check fails, or
    /// PDEATHSIG kills it). A holder still there after `timeout` is another live process (a daemon
    /// between its lock and its header, or in another PID namespace).
    private static func waitForLock(_ fd: Int32, timeout: Duration, path: String) throws(ProcessGroupRecordError) -> Bool {
        // The thread's own references (same file description, own eventfd), so that giving up
        // here closes nothing under it. Its flock then ends with the process, or takes a lock
        // that goes when its descriptor is closed.
        let done = eventfd(0, Int32(EFD_CLOEXEC))
        guard done >= 0 else { throw ProcessGroupRecordError(path: path, reason: .system(call: "eventfd", errno: errno)) }
        defer { close(done) }
        let lockFD = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        let doneFD = fcntl(done, F_DUPFD_CLOEXEC, 0)
        guard lockFD >= 0, doneFD >= 0 else {
            let code = errno
            if lockFD >= 0 { close(lockFD) }
            if doneFD >= 0 { close(doneFD) }
            throw ProcessGroupRecordError(path: path, reason: .system(call: "fcntl(F_DUPFD_CLOEXEC)", errno: code))
        }
        do {
            try startDedicatedThread(name: "bgw-record-lock", stackSize: 64 * 1024) {
                var result: UInt64 = retryOnInterrupt({ flock(lockFD, LOCK_EX) }) == 0 ? 1 : 2
                _ = write(doneFD, &result, 8)
                close(doneFD)
                close(lockFD)
            }
        } catch {
            close(lockFD)
            close(doneFD)
            throw ProcessGroupRecordError(path: path, reason: .system(call: error.call, errno: error.errno))
        }
        var ready = pollfd(fd: done, events: Int16(POLLIN), revents: 0)
        let end = ContinuousClock.now + timeout
        while true {
            let left = end - ContinuousClock.now
            guard left > .zero else { return false }
            let rc = retryOnInterrupt { poll(&ready, 1, Int32(clamping: milliseconds(left))) }
            if rc > 0 { break }
            if rc < 0 { return false }
        }
        var result: UInt64 = 0
        _ = read(done, &result, 8)
        guard result == 1 else { throw ProcessGroupRecordError(path: path, reason: .system(call: "flock", errno: EIO)) }
        return true
    }

    /// Kills (SIGKILL) every group that still has members in its recorded session, unless a
    /// member is this process or its child (a group of another runner of ours); waits up to
    /// `deadline` for them to be gone. Returns the groups killed.
    static func kill(_ recorded: [(pgid: Int32, session: Int32)], deadline: Duration) -> [Int32] {
        guard !recorded.isEmpty else { return [] }
        var killed: [Int32] = []
        var members: [Int32] = []
        let processes = ProcStat.all()
        let me = getpid()
        for group in recorded {
            let inGroup = processes.filter { $0.pgrp == group.pgid && $0.session == group.session }
            guard !inGroup.isEmpty, !inGroup.contains(where: { $0.ppid == me || $0.pid == me }) else { continue }
            // pidfds first, so that the wait below cannot be fooled by a reused pid.
            members += inGroup.compactMap { p in
                let pidfd = _bgw_pidfd_open(p.pid, 0)
                return pidfd >= 0 ? pidfd : nil
            }
            if Glibc.kill(-group.pgid, SIGKILL) == 0 { killed.append(group.pgid) }
        }
        waitUntilExited(members, deadline: deadline)
        members.forEach { close($0) }
        return killed
    }

    /// Waits until every pidfd is readable (its process has exited) or the deadline passes.
    private static func waitUntilExited(_ pidfds: [Int32], deadline: Duration) {
        let end = ContinuousClock.now + deadline
        var pending = pidfds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while !pending.isEmpty {
            let left = end - ContinuousClock.now
            guard left > .zero else { return }
            let rc = retryOnInterrupt { poll(&pending, nfds_t(pending.count), Int32(clamping: milliseconds(left))) }
            guard rc > 0 else { return }
            pending.removeAll { $0.revents != 0 }
        }
    }

    /// Whole milliseconds, rounded up (a poll timeout).
    private static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000 + 1
    }
}

/// The fields of /proc/PID/stat this runner needs.
struct ProcStat {
    var pid: Int32
    /// `R`, `S`, `D`, `Z` (exited, not reaped)...
    var state: Character
    var ppid: Int32
    var pgrp: Int32
    var session: Int32

    /// Every process now, from /proc.
    static func all() -> [ProcStat] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var result: [ProcStat] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let pid = Int32(name), let stat = read(pid: pid) else { continue }
            result.append(stat)
        }
        return result
    }

    /// /proc/PID/stat parsed, or nil when the process is gone. The command name may hold spaces
    /// and parentheses, so the fields are read after its last `)`.
    static func read(pid: Int32) -> ProcStat? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = buffer.withUnsafeMutableBytes { raw in retryOnInterrupt { Glibc.read(fd, raw.baseAddress, raw.count) } }
        guard n > 0, let close = buffer[0..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = buffer[(close + 1)..<n].split(separator: UInt8(ascii: " "))
        // state ppid pgrp session ...
        guard fields.count >= 4, let state = fields[0].first,
              let ppid = Int32(String(decoding: fields[1], as: UTF8.self)),
              let pgrp = Int32(String(decoding: fields[2], as: UTF8.self)),
              let session = Int32(String(decoding: fields[3], as: UTF8.self))
        else { return nil }
        return ProcStat(pid: pid, state: Character(Unicode.Scalar(state)), ppid: ppid, pgrp: pgrp, session: session)
    }
}
