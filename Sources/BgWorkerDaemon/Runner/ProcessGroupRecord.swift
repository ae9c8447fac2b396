// Why this file exists: PR_SET_PDEATHSIG kills a worker when the daemon dies (even by SIGKILL),
// but not what the worker started: its children survive in the worker's process group, orphaned.
// So the runner writes down every live worker's process group (with the daemon's session id, to
// recognise the group later), and a new runner kills the groups it finds there that still exist
// before it starts anything: a new daemon never finds an old copy of a worker still running.
// The session id is 0 when the session's leader lives outside our PID namespace (a daemon started
// by `unshare --pid --fork`, or in some containers): /proc then says 0 for every such process, so
// 0 is recorded and matched like any other id.
import CShims
import Glibc

/// The runtime file of live workers' process groups: one `PGID SID` line each.
struct ProcessGroupRecord: ~Copyable {
    private let fd: Int32
    let path: String
    private let session: Int32

    /// Opens (creating) the file at `path`; the caller then calls `killLeftovers()`.
    /// Creates the file's directory (0755) when it is missing, as when the daemon runs by hand
    /// without systemd's `RuntimeDirectory=`.
    init(path: String) throws(SystemCallError) {
        var fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 && errno == ENOENT, let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            _ = mkdir(String(path[..<slash]), 0o755)
            fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        }
        guard fd >= 0 else { throw SystemCallError(call: "open \(path)", errno: errno) }
        self.fd = fd
        self.path = path
        session = getsid(0)
    }

    deinit { close(fd) }

    /// Kills (SIGKILL) every recorded group that still has members in the recorded session,
    /// unless a member is our own child (a group of another runner in this process); waits up
    /// to `deadline` for them to be gone, then empties the file. Returns the groups killed.
    @discardableResult
    func killLeftovers(deadline: Duration = .seconds(5)) -> [Int32] {
        var text = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        var offset = 0
        while true {
            let n = chunk.withUnsafeMutableBytes { raw in
                retryOnInterrupt { pread(fd, raw.baseAddress, raw.count, off_t(offset)) }
            }
            if n <= 0 { break }
            text.append(contentsOf: chunk[0..<n])
            offset += n
        }
        let recorded = Self.parse(text)
        var killed: [Int32] = []
        var members: [Int32] = []
        if !recorded.isEmpty {
            let processes = ProcStat.all()
            let me = getpid()
            for group in recorded {
                let inGroup = processes.filter { $0.pgrp == group.pgid && $0.session == group.session }
                guard !inGroup.isEmpty, !inGroup.contains(where: { $0.ppid == me }) else { continue }
                // pidfds first, so that the wait below cannot be fooled by a reused pid.
                members += inGroup.compactMap { p in
                    let pidfd = _bgw_pidfd_open(p.pid, 0)
                    return pidfd >= 0 ? pidfd : nil
                }
                if kill(-group.pgid, SIGKILL) == 0 { killed.append(group.pgid) }
            }
        }
        waitUntilExited(members, deadline: deadline)
        members.forEach { close($0) }
        write([])
        return killed
    }

    /// Replaces the file's content with these groups. pwrite then ftruncate: a daemon killed
    /// between the two leaves a superset of lines, never loses one.
    func write(_ groups: some Collection<Int32>) {
        let bytes = Array(groups.map { "\($0) \(session)\n" }.joined().utf8)
        _ = bytes.withUnsafeBytes { raw in
            retryOnInterrupt { pwrite(fd, raw.baseAddress, raw.count, 0) }
        }
        _ = retryOnInterrupt { ftruncate(fd, off_t(bytes.count)) }
    }

    static func parse(_ bytes: [UInt8]) -> [(pgid: Int32, session: Int32)] {
        String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count == 2, let pgid = Int32(fields[0]), let session = Int32(fields[1]),
                  pgid > 1, session >= 0 else { return nil }
            return (pgid, session)
        }
    }

    /// Waits until every pidfd is readable (its process has exited) or the deadline passes.
    private func waitUntilExited(_ pidfds: [Int32], deadline: Duration) {
        let end = ContinuousClock.now + deadline
        var pending = pidfds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while !pending.isEmpty {
            let left = end - ContinuousClock.now
            guard left > .zero else { return }
            let ms = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            let rc = retryOnInterrupt { poll(&pending, nfds_t(pending.count), ms) }
            guard rc > 0 else { return }
            pending.removeAll { $0.revents != 0 }
        }
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
