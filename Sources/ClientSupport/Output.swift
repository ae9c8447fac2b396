import Glibc
import SystemSupport

/// Writes `line` and a newline to `fd` in one `write` where possible, so lines from several
/// threads never interleave and nothing waits in a buffer (stdout may be a pipe to the daemon,
/// whose reader sees each line as soon as it is written). A closed pipe drops the line: callers
/// ignore SIGPIPE (see `TerminationSignals.prepare`).
public func writeLine(_ line: String, to fd: Int32 = STDOUT_FILENO) {
    var bytes = Array(line.utf8)
    bytes.append(UInt8(ascii: "\n"))
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
    }
}

/// Starts a detached thread of its own for blocking work (sigwait, reading standard input), so
/// that such waits never hold a thread of Swift's cooperative pool.
public func startThread(_ body: @escaping @Sendable () -> Void) {
    do {
        try startDedicatedThread(name: "bgw-wait", body)
    } catch {
        writeLine("cannot start a thread: \(error)", to: STDERR_FILENO)
        exit(1)
    }
}
