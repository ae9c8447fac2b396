// The daemon's signals (SIGHUP, SIGTERM, SIGINT) are blocked in every thread and read from a
// signalfd registered with the daemon's event loop: no handler runs at an arbitrary point, a signal sent while
// the daemon starts waits in the kernel until it is read, and nothing starts libdispatch (a
// DispatchSource would, and with it a timer that wakes the process every second; see
// TaskThreadPool). Workers start with an empty signal mask (the spawn resets it).
import CShims
import Glibc

/// Signals delivered as an AsyncStream of their numbers, read on the event loop.
public final class ProcessSignals: Sendable {
    public let received: AsyncStream<Int32>

    /// Blocks `signals` in the calling thread. Call it first thing in `main`, before any other
    /// thread exists, so that every thread inherits the mask and none of them takes the signals.
    public static func block(_ signals: [Int32]) {
        var set = signalSet(signals)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    private static func signalSet(_ signals: [Int32]) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        return set
    }

    /// Starts reading `signals` (which must be blocked, see `block`) on `loop`: the signalfd is
    /// one of the loop's fds, and each signal goes to `received`.
    public init(_ signals: [Int32], loop: EventLoop) throws {
        var set = Self.signalSet(signals)
        let fd = signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
        guard fd >= 0 else { throw SystemCallError(call: "signalfd", errno: errno) }
        let (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        received = stream
        loop.execute {
            do {
                _ = try loop.register(fd: fd) { _ in
                    var info = signalfd_siginfo()
                    while true {
                        let n = withUnsafeMutableBytes(of: &info) { raw in
                            retryOnInterrupt { read(fd, raw.baseAddress, raw.count) }
                        }
                        guard n == MemoryLayout<signalfd_siginfo>.size else { return }
                        continuation.yield(Int32(bitPattern: info.ssi_signo))
                    }
                }
            } catch {
                DaemonMain.printErrors(["cannot watch the daemon's signals: \(error)"])
                continuation.finish()
            }
        }
    }
}
