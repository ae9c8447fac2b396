// The persisted enable/disable choices: one small file in the state directory, replaced
// atomically (write a temporary file, fsync, rename over the old one, fsync the folder), so a
// crash leaves either the old or the new content, never a torn file.
import BgWorkerCore
import Glibc

/// The state file `<state-directory>/enable-state`.
struct StateStore: Sendable {
    static let fileName = "enable-state"
    var directory: String

    init(directory: String) {
        self.directory = directory
    }

    var path: String { directory + "/" + Self.fileName }

    /// The largest file loaded: 16 MiB. The daemon writes one line per configured worker with a
    /// choice, at most 91 bytes (a 64-byte name), so 10,000 workers take under 1 MB and 16 MiB
    /// holds 184,000 such lines; above it the file is garbage, and reading it whole would only
    /// delay the start (issue 15). The largest file costs about 0.1 s to load.
    static let maximumSize = 16 << 20

    /// The persisted choices. A missing file is an empty state; any other file that cannot be
    /// used (unreadable, not a regular file, over `maximumSize`, corrupt) is an empty state
    /// plus a problem to log: the configuration then applies. A regular file that was not used
    /// is renamed aside (`keptAs`), so that the next write cannot replace what it held. Never fatal.
    func load() -> StateFileLoad {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { return StateFileLoad(state: EnableState()) }
            return StateFileLoad(state: EnableState(), problem: .unreadable(SystemCallError(call: "open \(path)", errno: code)))
        }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            return StateFileLoad(state: EnableState(), problem: .unreadable(SystemCallError(call: "fstat \(path)", errno: errno)))
        }
        // A fifo, device or directory holds no choice to keep; reading one could block or not end.
        guard status.st_mode & S_IFMT == S_IFREG else {
            return StateFileLoad(state: EnableState(), problem: .notARegularFile(fileKind(status.st_mode)))
        }
        let problem: StateFileProblem
        switch readAtMost(fd, Self.maximumSize, sizeHint: Int(status.st_size)) {
        case .failure(let error):
            problem = .unreadable(error)
        case .success(nil):
            problem = .tooLarge(bytes: max(Int(status.st_size), Self.maximumSize + 1))
        case .success(let bytes?):
            switch bytes.withUnsafeBufferPointer({ buffer in Result { () throws(EnableStateError) in try EnableState.parse(buffer) } }) {
            case .success(let state): return StateFileLoad(state: state)
            case .failure(let error): problem = .corrupt(error)
            }
        }
        return StateFileLoad(state: EnableState(), problem: problem, keptAs: keepAside())
    }

    /// Up to `limit` bytes of `fd`, or nil when it holds more: never reads past `limit` + 1
    /// (the file may grow, or be of a file system that reports no size).
    private func readAtMost(_ fd: Int32, _ limit: Int, sizeHint: Int) -> Result<[UInt8]?, SystemCallError> {
        guard sizeHint <= limit else { return .success(nil) }
        var bytes = [UInt8](repeating: 0, count: min(max(sizeHint, 0), limit) + 1)
        var count = 0
        while true {
            if count == bytes.count {
                guard count <= limit else { return .success(nil) }
                bytes += [UInt8](repeating: 0, count: min(max(count, 4096), limit + 1 - count))
            }
            let got = bytes.withUnsafeMutableBytes { raw in
                retryOnInterrupt { read(fd, raw.baseAddress! + count, raw.count - count) }
            }
            if got < 0 { return .failure(SystemCallError(call: "read \(path)", errno: errno)) }
            if got == 0 { break }
            count += got
        }
        bytes.removeSubrange(count...)
        return .success(bytes)
    }

    /// Renames the file to `enable-state.broken-<UTC time>` (or `...-2`, `-3` if taken).
    private func keepAside() -> Result<String, SystemCallError> {
        var now = time_t(time(nil))
        var parts = tm()
        gmtime_r(&now, &parts)
        var stamp = [CChar](repeating: 0, count: 32)
        let length = strftime(&stamp, stamp.count, "%Y%m%dT%H%M%SZ", &parts)
        let base = "\(path).broken-\(String(decoding: stamp.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self))"
        var aside = base
        var taken = stat()
        var suffix = 1
        // Only this daemon writes in its state folder, so nothing takes the name between the look and the rename.
        while lstat(aside, &taken) == 0 {
            suffix += 1
            aside = "\(base)-\(suffix)"
        }
        guard rename(path, aside) == 0 else {
            return .failure(SystemCallError(call: "rename \(path) to \(aside)", errno: errno))
        }
        return .success(aside)
    }

    /// Replaces the file atomically, creating the folder (0755) when it is missing.
    func save(_ state: EnableState) throws(SystemCallError) {
        makeDirectories(directory)
        let temporary = "\(path).tmp.\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemCallError(call: "open \(temporary)", errno: errno) }
        var bytes = Array(state.encoded().utf8)
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeMutableBytes { raw in
                retryOnInterrupt { write(fd, raw.baseAddress! + written, raw.count - written) }
            }
            guard count > 0 else {
                let code = errno
                close(fd)
                unlink(temporary)
                throw SystemCallError(call: "write \(temporary)", errno: code)
            }
            written += count
        }
        bytes = []
        guard fsync(fd) == 0 else {
            let code = errno
            close(fd)
            unlink(temporary)
            throw SystemCallError(call: "fsync \(temporary)", errno: code)
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw SystemCallError(call: "rename \(temporary) to \(path)", errno: code)
        }
        // The rename itself is durable only once the folder is synced.
        let folder = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            _ = fsync(folder)
            close(folder)
        }
    }
}

/// `mkdir -p` (0755); errors show up when the file inside is created.
func makeDirectories(_ path: String) {
    var prefix = ""
    for component in path.split(separator: "/", omittingEmptySubsequences: true) {
        prefix += "/" + component
        _ = mkdir(prefix, 0o755)
    }
}

/// What `StateStore.load` found.
struct StateFileLoad {
    var state: EnableState
    /// Why the file was not used (nil: used, or missing).
    var problem: StateFileProblem?
    /// Where a regular file that was not used now is, or why it could not be moved.
    var keptAs: Result<String, SystemCallError>?

    /// The log line for `problem` (nil when there is none), naming where the file's content is.
    func message(path: String) -> String? {
        guard let problem else { return nil }
        switch keptAs {
        case .success(let aside)?:
            return "\(path): \(problem); it was renamed \(aside) (its choices are there, to restore by hand); using the configured values"
        case .failure(let error)?:
            return "\(path): \(problem); it could not be set aside (\(error)), so the next Enable or Disable replaces it; using the configured values"
        case nil:
            return "\(path): \(problem); using the configured values"
        }
    }
}

/// Why the state file was not used.
enum StateFileProblem: Error, CustomStringConvertible {
    case unreadable(SystemCallError)
    case notARegularFile(String)
    /// Over `StateStore.maximumSize` (at least `bytes`).
    case tooLarge(bytes: Int)
    case corrupt(EnableStateError)

    var description: String {
        switch self {
        case .unreadable(let error): "\(error)"
        case .notARegularFile(let kind): "not a regular file but a \(kind); ignored"
        case .tooLarge(let bytes):
            "\(bytes) bytes, over the \(StateStore.maximumSize >> 20) MiB a state file may have (about 184,000 workers)"
        case .corrupt(let error): "\(error)"
        }
    }
}

private func fileKind(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFDIR: "directory"
    case S_IFIFO: "fifo"
    case S_IFCHR: "character device"
    case S_IFBLK: "block device"
    case S_IFSOCK: "socket"
    default: "file of mode \(String(mode, radix: 8))"
    }
}
