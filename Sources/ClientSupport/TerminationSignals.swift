import Glibc

/// SIGTERM and SIGINT as events, so that a long-running client ends cleanly (exit 0) rather
/// than by the default action.
///
/// The signals are blocked in every thread and taken with `sigwait` by the main thread, which
/// therefore must not run Swift's async main: on Linux that main thread parks in libdispatch's
/// `dispatch_main`, which waits in `sigsuspend` with an empty mask, so a blocked signal would
/// be delivered to it and kill the process. Use a synchronous `main.swift` that calls `prepare`,
/// starts its async work in a task, and then `wait`s.
public enum TerminationSignals {
    private static func set() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        return set
    }

    /// Blocks SIGTERM and SIGINT and ignores SIGPIPE. Call it first thing in `main`, before any
    /// other thread exists: threads inherit the mask, so none of them can take the signal.
    public static func prepare() {
        var blocked = set()
        pthread_sigmask(SIG_BLOCK, &blocked, nil)
        // An inherited SIG_IGN would let the kernel drop the signal before it is waited for.
        signal(SIGTERM, SIG_DFL)
        signal(SIGINT, SIG_DFL)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Blocks the calling (main) thread until SIGTERM or SIGINT comes; returns its number.
    public static func wait() -> Int32 {
        var waited = set()
        var number: Int32 = 0
        while sigwait(&waited, &number) != 0 {}
        return number
    }

    /// `SIGTERM`, `SIGINT`, or the number.
    public static func name(_ number: Int32) -> String {
        switch number {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        default: "signal \(number)"
        }
    }
}
