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

    /// The persisted choices. A missing file is an empty state; an unreadable or corrupt one is
    /// an empty state plus a problem to log: the configuration then applies. Never fatal.
    func load() -> (state: EnableState, problem: String?) {
        switch readWholeFile(path) {
        case .success(let bytes):
            let (state, problem) = EnableState.decode(String(decoding: bytes, as: UTF8.self))
            return (state, problem.map { "\(path): \($0); using the configured values" })
        case .failure(let error) where error.errno == ENOENT:
            return (EnableState(), nil)
        case .failure(let error):
            return (EnableState(), "\(error); using the configured values")
        }
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
