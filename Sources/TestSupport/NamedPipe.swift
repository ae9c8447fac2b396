import Glibc
import Synchronization

/// A named pipe held open by the test for reading and writing: a child reads it as its standard
/// input (ChildProcess gives children /dev/null), or writes its output into it (a worker started
/// by the daemon, whose own output goes elsewhere). Held open, it has no end until `end()`.
public final class NamedPipe: Sendable {
    public let path: String
    /// -1 once ended: closing a descriptor twice would close whatever reused its number.
    private let fd: Mutex<Int32>

    public init(path: String) throws {
        self.path = path
        guard mkfifo(path, 0o600) == 0 else { throw TestProcessError("mkfifo \(path): \(errno)") }
        // O_RDWR: the open does not wait for the other side.
        let opened = open(path, O_RDWR | O_CLOEXEC)
        guard opened >= 0 else { throw TestProcessError("open \(path): \(errno)") }
        fd = Mutex(opened)
    }

    public convenience init(in directory: TemporaryDirectory, name: String = "pipe") throws {
        try self.init(path: directory.file(name))
    }

    deinit { end() }

    public func send(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        fd.withLock { fd in
            guard fd >= 0 else { return }
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
    }

    /// Ends the reader's input.
    public func end() {
        fd.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    /// `argv` run with this pipe as standard input.
    public func asStandardInput(of argv: [String]) -> [String] {
        ["/bin/sh", "-c", "exec \"$0\" \"$@\" < '\(path)'"] + argv
    }

    /// `argv` run with its standard output into this pipe.
    public func asStandardOutput(of argv: [String]) -> [String] {
        ["/bin/sh", "-c", "exec \"$0\" \"$@\" > '\(path)'"] + argv
    }
}
