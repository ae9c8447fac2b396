// The daemon's fd budget (issue 15): it holds 2 fds per worker (a pidfd and an output pipe), so
// 10,000 workers need more than the 1024 a service gets by default (systemd's
// LimitNOFILE=1024:524288). As systemd advises, the soft limit is raised to the hard one at
// start; workers get 1024 back in the spawn (`workerSoftNofile`).
import Glibc

public enum FileLimit {
    /// Raises the soft RLIMIT_NOFILE to the hard limit; returns both as they are then.
    @discardableResult
    public static func raiseSoftToHard() -> (soft: UInt64, hard: UInt64) {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return (0, 0) }
        if limits.rlim_cur < limits.rlim_max {
            var raised = limits
            raised.rlim_cur = limits.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limits = raised }
        }
        return (UInt64(limits.rlim_cur), UInt64(limits.rlim_max))
    }

    /// The soft and hard RLIMIT_NOFILE now.
    public static var current: (soft: UInt64, hard: UInt64) {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return (0, 0) }
        return (UInt64(limits.rlim_cur), UInt64(limits.rlim_max))
    }
}
