// Why this file exists: PR_SET_PDEATHSIG kills a worker when the daemon dies (even by SIGKILL),
// but not what the worker started: its children survive in the worker's process group, orphaned.
// So every live worker's process group is written down, and the next daemon kills the groups it
// finds there that still exist before it starts anything: it never finds an old copy running.
//
// Two rules make that safe (issues 8 and 17, docs/process-runner.md):
// - A group is recorded before its program runs: the spawned child writes its own pid (= its
//   group) into a slot of the file right after setsid, long before execve (`_bgw_spawn`).
// - Only a dead daemon's groups are killed: a daemon holds an flock on the file for its life, so
//   a second daemon on the same runtime directory cannot take it and refuses to start, naming
//   the holder (whose pid is in the header).
//
// - Only what the dead owner can have started is killed: a process that started before the owner
//   or its worker's leader, or in another boot, cannot be its worker's; a live process with the
//   leader's pid but another start time is a later process that reuses the id (and its session,
//   then, is not the worker's: the kernel frees a session id only when no process is left in
//   it); and only a file that no other user can have written is believed (no symlink, owned by
//   us, not writable by others, in a folder only root or we can write).
//
// Layout (native byte order): a 48-byte header, then 16-byte slots, one per running worker.
//   header: magic "BGWPGRP\0", version u32 (5), slot size u32 (16), owner pid i32, owner session
//           i32, generation u32, unused u32, owner start time u64 (clock ticks after boot,
//           /proc/PID/stat field 22), boot u64 (the first 16 hex digits of the boot id)
//   slot:   pgid i32 (0: free), generation u32, the leader's start time u64 (0: unknown)
// A new owner kills the groups of the slots whose generation is the header's (what the previous
// owner recorded), then starts the file afresh with the next generation. A child of a dead owner
// that was still on its way to exec (it fails its parent check and exits, never running the
// program) may write its slot after that; its old generation marks it stale.
// Since version 4 each worker leads a session of its own (setsid), so a recorded group's members
// are the processes in the session of the same id, whatever group they moved to. Versions 3 and 4
// (before 2026-12-05) had 8-byte slots without the leader's start time; version 3's workers' groups
// were in the owner's session (the header's). Both are still read, so that a daemon upgraded after
// a crash still cleans up; without a start time, a leader that lives and is not dying is taken
// for a later process with its id. The owner's session id is 0 when its leader lives outside our
// PID namespace (a daemon started by `unshare --pid --fork`, or in some containers): /proc then
// says 0 for every such process, so 0 is recorded and matched like any other id.
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
        /// The file or its folder could have been written by another user, or is not a plain
        /// file: what it names cannot be trusted to be ours to kill.
        case unsafe(String)
        /// /proc shows another PID namespace than ours (`procSelf`: the pid it gives this
        /// process, nil when unreadable): pids recorded here name other processes there.
        case foreignProc(procSelf: Int32?, pid: Int32)
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
        case .foreignProc(let procSelf, let pid):
            let seen = procSelf.map { "says this process is pid \($0)" } ?? "has no /proc/self"
            return "refusing the record of process groups \(path): /proc \(seen), but it is pid \(pid) in its own PID "
                + "namespace, so /proc is of another namespace and the pids recorded would name other processes there. "
                + "Mount a /proc of the daemon's PID namespace (unshare --pid --fork --mount-proc, or a container's own /proc)"
        case .unsafe(let why):
            return "refusing the record of process groups \(path): \(why) (the daemon kills what it names after "
                + "a crash, so only a file that no other user can have written is used; give the daemon a runtime "
                + "directory of its own, e.g. RUNTIME_DIRECTORY=/run/bgworker)"
        }
    }
}

/// The runtime file of live workers' process groups, owned (locked) by this runner for its life.
/// Used on one thread at a time: made by the runner's creator, then only on the event loop thread.
final class ProcessGroupRecord {
    static let headerSize = 48
    static let slotSize = 16
    static let version: UInt32 = 5
    /// The version before each slot had its leader's start time; read, never written.
    static let ownSessionVersion: UInt32 = 4
    /// The version before workers had sessions of their own; read, never written.
    static let sharedSessionVersion: UInt32 = 3
    /// The slot size of versions 3 and 4.
    static let shortSlotSize = 8
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
        try Self.checkProcIsOurs(path: path)
        let flags = O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW
        var fd = open(path, flags, 0o600)
        if fd < 0 && errno == ENOENT, let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            _ = mkdir(String(path[..<slash]), 0o755)
            fd = open(path, flags, 0o600)
        }
        guard fd >= 0 else {
            let code = errno
            if code == ELOOP { throw ProcessGroupRecordError(path: path, reason: .unsafe("it is a symbolic link")) }
            throw ProcessGroupRecordError(path: path, reason: .system(call: "open", errno: code))
        }
        do {
            try Self.checkTrusted(fd, path: path)
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

    /// Refuses a /proc of another PID namespace (a daemon started by `unshare --pid --fork`
    /// without `--mount-proc`): there the recorded pids (our namespace's) are other processes, so
    /// the next daemon would skip its workers' leftovers or kill another session with the id.
    private static func checkProcIsOurs(path: String) throws(ProcessGroupRecordError) {
        var buffer = [CChar](repeating: 0, count: 32)
        let n = readlink("/proc/self", &buffer, buffer.count - 1)
        let procSelf = n > 0 ? Int32(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) : nil
        guard procSelf == getpid() else {
            throw ProcessGroupRecordError(path: path, reason: .foreignProc(procSelf: procSelf, pid: getpid()))
        }
    }

    /// Refuses a file another user could have written (or planted as a hard link), or one in a
    /// folder where another user could replace it.
    private static func checkTrusted(_ fd: Int32, path: String) throws(ProcessGroupRecordError) {
        func unsafe(_ why: String) -> ProcessGroupRecordError { ProcessGroupRecordError(path: path, reason: .unsafe(why)) }
        var file = stat()
        guard fstat(fd, &file) == 0 else { throw ProcessGroupRecordError(path: path, reason: .system(call: "fstat", errno: errno)) }
        guard file.st_mode & S_IFMT == S_IFREG else { throw unsafe("it is not a regular file") }
        guard file.st_uid == geteuid() else { throw unsafe("it belongs to uid \(file.st_uid), not to this daemon's \(geteuid())") }
        guard file.st_mode & 0o022 == 0 else { throw unsafe("others may write it (mode \(String(file.st_mode & 0o7777, radix: 8)))") }
        guard file.st_nlink == 1 else { throw unsafe("it has \(file.st_nlink) hard links") }
        let slash = path.lastIndex(of: "/")
        let folder = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        var dir = stat()
        guard stat(folder, &dir) == 0 else { throw ProcessGroupRecordError(path: path, reason: .system(call: "stat \(folder)", errno: errno)) }
        guard dir.st_uid == 0 || dir.st_uid == geteuid() else {
            throw unsafe("its folder \(folder) belongs to uid \(dir.st_uid)")
        }
        // A sticky folder (like /tmp) lets no other user replace or rename our file.
        guard dir.st_mode & 0o022 == 0 || dir.st_mode & S_ISVTX != 0 else {
            throw unsafe("others may write its folder \(folder) (mode \(String(dir.st_mode & 0o7777, radix: 8)))")
        }
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
        let killed = previous.header.map { kill(previous.groups, of: $0, deadline: leftoverDeadline) } ?? []

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
        for field in [ProcStat.read(pid: getpid())?.startTime ?? 0, currentBoot] {
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
    /// stale entry: the next owner would kill that group only if it lived, in its own session.
    func clear(_ slot: Int) {
        var zero: (UInt64, UInt64) = (0, 0)
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
        var version: UInt32 = ProcessGroupRecord.version
        var owner: Int32
        /// The owner's own session; its workers' groups were in it up to version 3.
        var session: Int32
        var generation: UInt32
        /// When the owner started, in clock ticks after boot.
        var ownerStart: UInt64 = 0
        /// The boot the owner ran in (`currentBoot`).
        var boot: UInt64 = 0
    }

    /// This boot: the first 16 hex digits of /proc/sys/kernel/random/boot_id (0 if unreadable,
    /// which matches no record: nothing is killed then).
    static let currentBoot: UInt64 = {
        let fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let n = bytes.withUnsafeMutableBytes { raw in retryOnInterrupt { read(fd, raw.baseAddress, raw.count) } }
        guard n > 0 else { return 0 }
        let hex = String(decoding: bytes[0..<n].filter { $0 != UInt8(ascii: "-") && $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        return UInt64(hex.prefix(16), radix: 16) ?? 0
    }()

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
        let slotSizes: [UInt32: Int] = [version: slotSize, ownSessionVersion: shortSlotSize, sharedSessionVersion: shortSlotSize]
        guard let size = slotSizes[field(8)], field(12) == UInt32(size) else { return nil }
        func wide(_ at: Int) -> UInt64 {
            bytes.dropFirst(at).prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        }
        return Header(version: field(8), owner: Int32(bitPattern: field(16)), session: Int32(bitPattern: field(20)),
                      generation: field(24), ownerStart: wide(32), boot: wide(40))
    }

    /// A worker's group as its owner recorded it.
    struct RecordedGroup: Equatable {
        /// The group's id: its leader's pid, and (since version 4) its session's id.
        var pgid: Int32
        /// The session its members are in.
        var session: Int32
        /// When the leader started (clock ticks after boot); 0: not recorded (versions 3 and 4).
        var leaderStart: UInt64 = 0

        init(pgid: Int32, session: Int32? = nil, leaderStart: UInt64 = 0) {
            self.pgid = pgid
            self.session = session ?? pgid
            self.leaderStart = leaderStart
        }

        /// Since version 4 the whole session is the worker's: a member may have left the group
        /// (setpgid) but cannot leave the session without making its own (setsid).
        var isOwnSession: Bool { session == pgid }

        func contains(_ process: ProcStat) -> Bool {
            process.session == session && (isOwnSession || process.pgrp == pgid)
        }
    }

    /// What a previous owner left: its header, and the groups to kill. A file without our header
    /// names nothing (the text of earlier daemons said nothing of when they started, so what it
    /// names cannot be told from a reused id).
    static func readRecord(_ fd: Int32) -> (header: Header?, groups: [RecordedGroup]) {
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

    static func parse(_ bytes: [UInt8]) -> (header: Header?, groups: [RecordedGroup]) {
        guard let header = parseHeader(bytes[...]) else { return (nil, []) }
        let size = header.version == version ? slotSize : shortSlotSize
        var groups: [RecordedGroup] = []
        var seen = Set<Int32>()
        var at = headerSize
        while at + size <= bytes.count {
            let (pgid, generation, start) = bytes[at..<(at + size)].withUnsafeBytes {
                ($0.loadUnaligned(as: Int32.self), $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self),
                 size == slotSize ? $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) : 0)
            }
            if pgid > 1, generation == header.generation, seen.insert(pgid).inserted {
                groups.append(RecordedGroup(
                    pgid: pgid, session: header.version == sharedSessionVersion ? header.session : pgid, leaderStart: start))
            }
            at += size
        }
        return (header, groups)
    }

    /// Whether `pid` runs (a zombie has exited: its files, and its locks, are gone).
    static func isLive(_ pid: Int32) -> Bool {
        pid == getpid() || ProcStat.read(pid: pid)?.isRunning == true
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

    /// Kills (SIGKILL) what the dead owner `header` can have left in each recorded group: the
    /// members in the group's session (its own since version 4), of its boot, started no earlier
    /// than the owner and the group's leader, unless a member is this process or its child (a
    /// group of another runner of ours), and unless a live process with the leader's pid started
    /// at another time (a later process reusing the id: see the file's comment). Each member is
    /// killed through a pidfd opened and checked before the signal, so a reused pid is never hit;
    /// the groups are scanned again until no new member turns up (one may fork between a scan and
    /// its kill), however long that takes up to `scanLimit`. Then waits up to `deadline` for them
    /// to be gone. Returns the groups killed.
    /// - Parameter afterFirstScan: for tests: runs between the first scan and what follows it.
    /// - Parameter firstScan: for tests: the processes the first scan saw (one whose entries were
    ///   read after a member forked and exited).
    static func kill(
        _ recorded: [RecordedGroup], of header: Header, deadline: Duration, scanLimit: Duration = .seconds(60),
        firstScan: [ProcStat]? = nil, afterFirstScan: () -> Void = {}
    ) -> [Int32] {
        guard !recorded.isEmpty, header.boot != 0, header.boot == currentBoot else { return [] }
        let me = getpid()
        var processes = firstScan ?? ProcStat.all()
        let byPid = Dictionary(processes.map { ($0.pid, $0) }, uniquingKeysWith: { first, _ in first })
        let bySession = Dictionary(grouping: processes, by: \.session)
        // The dead owner's groups, judged once, each with the earliest start of its members,
        // found by session (own sessions) or by group (version 3's shared session).
        var leftovers: [(group: RecordedGroup, earliest: UInt64)] = []
        var leftoverSessions: [Int32: Int] = [:]
        var leftoverGroups: [Int32: Int] = [:]
        for group in recorded {
            if let leader = byPid[group.pgid] {
                if group.leaderStart != 0 {
                    guard leader.startTime == group.leaderStart else { continue }
                } else if leader.isRunning, !leader.isDying {
                    // Without a recorded start: PR_SET_PDEATHSIG kills every leader with its
                    // daemon, so one that lives on is taken for a later process with the id.
                    continue
                }
            }
            let earliest = max(header.ownerStart, group.leaderStart)
            // Zombies too: a member may have forked after /proc was listed and exited before its
            // entry was read (the spawn-kill test's `(sleep &)` subshell), its child unlisted. So
            // is a group that answers kill(-pgid, 0): the worker's, while its pid cannot be reused.
            let inGroup = (bySession[group.session] ?? []).filter { group.contains($0) && $0.startTime >= earliest }
            guard !inGroup.isEmpty || Glibc.kill(-group.pgid, 0) == 0,
                  !inGroup.contains(where: { $0.ppid == me || $0.pid == me }) else { continue }
            if group.isOwnSession { leftoverSessions[group.session] = leftovers.count } else { leftoverGroups[group.pgid] = leftovers.count }
            leftovers.append((group, earliest))
        }
        afterFirstScan()
        // A member can fork between the scan and its kill (a load test saw it with 9,000 other
        // processes in /proc): scan again until a scan finds no one new. A killed process
        // cannot fork, so each round leaves only what the last one's forkers made. The deadline
        // does not cut this short (a scan of thousands of members under load outlasts it, and
        // what it left was forgotten with the old record); each member is tried once, so one
        // that cannot be killed does not keep it going, and `scanLimit` bounds the rest.
        let scanEnd = ContinuousClock.now + max(scanLimit, deadline)
        var killed = Set<Int32>()
        var tried = Set<ProcessIdentity>()
        var members: [Int32] = []
        // The scans end after two in a row found no one new: a member can also fork after /proc
        // is listed and be gone (reaped) before its entry is read, its child in neither.
        var quietScans = 0
        while !leftovers.isEmpty {
            // Any member not tried before, even one gone by its kill, or a zombie: it may have
            // forked first.
            var newcomers = false
            for process in processes {
                guard let index = leftoverSessions[process.session] ?? leftoverGroups[process.pgrp] else { continue }
                let (group, earliest) = leftovers[index]
                guard group.contains(process), process.startTime >= earliest else { continue }
                guard tried.insert(ProcessIdentity(pid: process.pid, startTime: process.startTime)).inserted else { continue }
                newcomers = true
                guard process.isRunning else { continue }
                let pidfd = _bgw_pidfd_open(process.pid, 0)
                guard pidfd >= 0 else { continue }
                guard let now = ProcStat.read(pid: process.pid), now.session == process.session,
                      now.startTime == process.startTime, _bgw_pidfd_send_signal(pidfd, SIGKILL) == 0 else {
                    close(pidfd)
                    continue
                }
                members.append(pidfd)
                killed.insert(group.pgid)
            }
            quietScans = newcomers ? 0 : quietScans + 1
            guard quietScans < 2, ContinuousClock.now < scanEnd else { break }
            processes = ProcStat.all()
        }
        // The killed are dying (SIGKILL pending): given the deadline from here, however long the scans took.
        waitUntilExited(members, deadline: deadline)
        members.forEach { close($0) }
        return recorded.map(\.pgid).filter { killed.contains($0) }
    }

    /// A process, told apart from a later one with the same pid.
    private struct ProcessIdentity: Hashable {
        var pid: Int32
        var startTime: UInt64
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
    /// PF_* flags (field 9).
    var flags: UInt64 = 0
    /// Clock ticks after boot (field 22).
    var startTime: UInt64 = 0
    /// Its threads (field 20), counting a main thread that has exited while others run.
    var threads: Int = 1

    /// Not exited. A process whose main thread exited (pthread_exit, or a raw exit) while other
    /// threads run on says `Z` in /proc, as a zombie does, yet it runs: `threads` tells them apart.
    var isRunning: Bool { (state != "Z" && state != "X") || threads > 1 }

    /// Exiting (PF_EXITING), or with SIGKILL pending: what PR_SET_PDEATHSIG leaves of a worker
    /// leader whose daemon died.
    var isDying: Bool {
        if flags & 0x4 != 0 { return true }
        let fd = open("/proc/\(pid)/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { raw in retryOnInterrupt { Glibc.read(fd, raw.baseAddress, raw.count) } }
        guard n > 0 else { return false }
        let status = String(decoding: buffer[0..<n], as: UTF8.self)
        for line in status.split(separator: "\n") where line.hasPrefix("SigPnd:") || line.hasPrefix("ShdPnd:") {
            if let mask = UInt64(line.split(separator: "\t").last ?? "", radix: 16), mask & (1 << 8) != 0 { return true }
        }
        return false
    }

    /// Every process now, from /proc. Each entry is read as it is listed (not after the whole
    /// listing), so that few exit in between.
    static func all() -> [ProcStat] {
        guard let stream = opendir("/proc") else { return [] }
        defer { closedir(stream) }
        var processes: [ProcStat] = []
        while let entry = readdir(stream) {
            if let pid = Int32(direntName(entry)), let process = read(pid: pid) { processes.append(process) }
        }
        return processes
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
        // state ppid pgrp session tty_nr tpgid flags ... num_threads ... starttime (fields 3-9, 20, 22)
        guard fields.count >= 20, let state = fields[0].first,
              let ppid = Int32(String(decoding: fields[1], as: UTF8.self)),
              let pgrp = Int32(String(decoding: fields[2], as: UTF8.self)),
              let session = Int32(String(decoding: fields[3], as: UTF8.self))
        else { return nil }
        func number(_ index: Int) -> UInt64 { UInt64(String(decoding: fields[index], as: UTF8.self)) ?? 0 }
        return ProcStat(pid: pid, state: Character(Unicode.Scalar(state)), ppid: ppid, pgrp: pgrp, session: session,
                        flags: number(6), startTime: number(19), threads: Int(clamping: number(17)))
    }
}
