// Small value types the state machine is made of: monotonic time, HA roles and the run rule,
// process exit statuses.

/// A point on a monotonic clock, in nanoseconds from an arbitrary origin (the daemon uses
/// `CLOCK_MONOTONIC`; tests use a fake clock). The core never reads a clock: every event carries one.
public struct MonotonicInstant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64

    public init(nanoseconds: Int64) {
        self.nanoseconds = nanoseconds
    }

    public static func seconds(_ seconds: Double) -> MonotonicInstant {
        MonotonicInstant(nanoseconds: 0).advanced(bySeconds: seconds)
    }

    /// `self` plus a non-negative number of seconds, saturating instead of overflowing (a
    /// configured delay may be huge).
    public func advanced(bySeconds seconds: Double) -> MonotonicInstant {
        let delta = seconds * 1e9
        guard delta < Double(Int64.max - nanoseconds) else { return MonotonicInstant(nanoseconds: .max) }
        return MonotonicInstant(nanoseconds: nanoseconds + Int64(delta.rounded()))
    }

    /// Seconds from `earlier` to `self`.
    public func seconds(since earlier: MonotonicInstant) -> Double {
        Double(nanoseconds - earlier.nanoseconds) / 1e9
    }

    public static func < (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Bool {
        lhs.nanoseconds < rhs.nanoseconds
    }

    public var description: String { "\(Double(nanoseconds) / 1e9)s" }
}

/// The `HARole` property: `standalone` without HA, else what the HA source reports.
public enum HARole: String, Sendable, CaseIterable {
    case standalone, primary, secondary, unknown
}

extension HASource {
    /// The role before the source has said anything: `standalone` without HA, else `unknown`.
    /// Also the role right after a reload switched the source.
    public var initialRole: HARole { self == .none ? .standalone : .unknown }
}

/// The role as reported by the HA source, and the role in force that the run rule uses.
///
/// They differ only under `on-lost = keep`: while the reported role is `unknown`, the last known
/// role (`primary` or `secondary`) stays in force; before any was known, `unknown` is in force.
/// With `keep-for` > 0 it stays so for at most that many seconds after the role became
/// `unknown`; then `unknown` is in force, as under `stop`, until a role is known again. The
/// expiry is an input like any other (`reevaluate(at:)`): the owner arms a timer for
/// `keepDeadline`. `standalone` is not an HA role and is never "last known"; it forgets the
/// last known role, so HA configured again later starts from nothing.
///
/// With a `lease` (source `pacemaker`), a reported `primary` or `secondary` lasts that many
/// seconds unless reported again: at `leaseDeadline` (`expireLease(at:)`, from the same timer,
/// whose instant is `timerDeadline`) the reported role becomes `unknown`, as if the source had
/// said so then, and `on-lost` applies.
public struct RoleState: Sendable, Equatable {
    public private(set) var reported: HARole
    /// The last `primary` or `secondary` reported, if any.
    public private(set) var lastKnown: HARole?
    public private(set) var onLost: OnLost
    /// Seconds; 0 is without limit.
    public private(set) var keepFor: Double
    /// When the reported role last became `unknown`; nil while a role is known.
    public private(set) var unknownSince: MonotonicInstant?
    /// The bounded keep ran out: `unknown` is in force until a role is known again.
    public private(set) var keepExpired = false
    /// Seconds a reported role lasts unless reported again; nil: for ever.
    public private(set) var lease: Double?
    /// When the reported role was last reported, while it is a leased role.
    public private(set) var leasedAt: MonotonicInstant?
    /// The reported role is `unknown` because its lease ran out (until the next report).
    public private(set) var leaseExpired = false

    public init(reported: HARole, onLost: OnLost = .stop, keepFor: Double = 0, lease: Double? = nil) {
        self.reported = reported
        self.onLost = onLost
        self.keepFor = keepFor
        self.lease = lease
        lastKnown = reported == .primary || reported == .secondary ? reported : nil
    }

    public mutating func report(_ role: HARole, at now: MonotonicInstant) {
        if role == .unknown {
            // A repeated `unknown` does not extend the keep.
            if unknownSince == nil { unknownSince = now }
        } else {
            unknownSince = nil
        }
        reported = role
        if role == .primary || role == .secondary { lastKnown = role }
        if role == .standalone { lastKnown = nil }
        // Every report of a role renews its lease, a repeat included (that is what renews it).
        leasedAt = role == .primary || role == .secondary ? now : nil
        leaseExpired = false
        reevaluate(at: now)
    }

    /// A reload's `on-lost`, `keep-for` and `lease`; the keep is measured from when the role
    /// became `unknown`, so a shorter `keep-for` may end it at once and a longer one may restore
    /// it. A changed lease counts from the last report; one already over ends at the next
    /// `expireLease(at:)` (the owner's timer, due at once).
    public mutating func configure(onLost: OnLost, keepFor: Double, lease: Double? = nil, at now: MonotonicInstant) {
        self.onLost = onLost
        self.keepFor = keepFor
        self.lease = lease
        reevaluate(at: now)
    }

    /// Ends the bounded keep when its time has come (and only then).
    public mutating func reevaluate(at now: MonotonicInstant) {
        keepExpired = boundedKeepEnd.map { now >= $0 } ?? false
    }

    /// The role timer is due: a lease that ran out makes the reported role `unknown` from the
    /// lease's end (the start of any keep), then the keep is reevaluated.
    public mutating func expireLease(at now: MonotonicInstant) {
        if let end = leaseDeadline, now >= end {
            reported = .unknown
            unknownSince = end
            leasedAt = nil
            leaseExpired = true
        }
        reevaluate(at: now)
    }

    /// Whether `expireLease(at: now)` would end the reported role (so the owner can announce
    /// `unknown` before the workers stop).
    public func leaseEnds(at now: MonotonicInstant) -> Bool {
        leaseDeadline.map { now >= $0 } ?? false
    }

    /// The end of a bounded keep in progress, expired or not.
    private var boundedKeepEnd: MonotonicInstant? {
        guard reported == .unknown, onLost == .keep, keepFor > 0, lastKnown != nil, let unknownSince else { return nil }
        return unknownSince.advanced(bySeconds: keepFor)
    }

    /// When the role in force will change by itself (the bounded keep ends), if it will: the
    /// owner calls `reevaluate(at:)` then.
    public var keepDeadline: MonotonicInstant? {
        keepExpired ? nil : boundedKeepEnd
    }

    /// When the leased role ends unless reported again.
    public var leaseDeadline: MonotonicInstant? {
        guard let lease, let leasedAt else { return nil }
        return leasedAt.advanced(bySeconds: lease)
    }

    /// The owner's one role timer: the earlier of `keepDeadline` and `leaseDeadline`.
    public var timerDeadline: MonotonicInstant? {
        switch (keepDeadline, leaseDeadline) {
        case (let keep?, let lease?): min(keep, lease)
        case (let keep, let lease): keep ?? lease
        }
    }

    /// The role the run rule applies.
    public var inForce: HARole {
        guard reported == .unknown, onLost == .keep, !keepExpired, let lastKnown else { return reported }
        return lastKnown
    }
}

/// The run rule: may a worker with this `run-on` run under this role in force?
/// `standalone`: all; `primary`/`secondary`: matching or `any`; `unknown`: only `any`.
public func mayRun(_ runOn: RunOn, roleInForce role: HARole) -> Bool {
    switch role {
    case .standalone: true
    case .primary: runOn != .secondary
    case .secondary: runOn != .primary
    case .unknown: runOn == .any
    }
}

/// How a worker's main process ended.
public enum WorkerExit: Sendable, Hashable, CustomStringConvertible {
    /// It called exit with this status.
    case exited(Int32)
    /// A signal ended it.
    case killed(Int32)
    /// A signal ended it and it dumped core.
    case dumped(Int32)
    /// Killed for a missed watchdog deadline or `WATCHDOG=trigger` (SIGABRT, then SIGKILL).
    case watchdog
    /// Killed for sending no `READY=1` within `start-timeout`.
    case startTimeout

    /// The contract's `LastExit` form: `exited 3`, `killed SIGKILL`, `dumped SIGSEGV`.
    public var description: String {
        switch self {
        case .exited(let code): "exited \(code)"
        case .killed(let signal): "killed \(signalName(signal))"
        case .dumped(let signal): "dumped \(signalName(signal))"
        case .watchdog: "watchdog"
        case .startTimeout: "start-timeout"
        }
    }

    /// `WorkerStateChanged`'s reason: `exited with status 3`, `killed by SIGSEGV`,
    /// `killed by SIGSEGV (core dumped)`.
    public var reason: String {
        switch self {
        case .exited(let code): "exited with status \(code)"
        case .killed(let signal): "killed by \(signalName(signal))"
        case .dumped(let signal): "killed by \(signalName(signal)) (core dumped)"
        case .watchdog: "killed by the watchdog"
        case .startTimeout: "no READY=1 within start-timeout"
        }
    }

    /// Decodes a `waitid` result (`si_code`, `si_status`): `CLD_EXITED` = 1, `CLD_KILLED` = 2,
    /// `CLD_DUMPED` = 3. Anything else (stop/continue codes, never asked for) reads as killed.
    public init(siginfoCode code: Int32, status: Int32) {
        switch code {
        case 1: self = .exited(status)
        case 3: self = .dumped(status)
        default: self = .killed(status)
        }
    }
}

/// `SIGTERM` for 15, `SIGRTMIN+3` for 37, `SIG99` for what Linux does not define.
public func signalName(_ signal: Int32) -> String {
    let names: [String] = [
        "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL",
        "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD",
        "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ",
        "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS",
    ]
    if signal >= 1 && Int(signal) <= names.count { return names[Int(signal) - 1] }
    // Linux's real-time signals are 32...64; glibc reserves the first two, so SIGRTMIN is 34.
    if signal == 34 { return "SIGRTMIN" }
    if signal > 34 && signal <= 64 { return "SIGRTMIN+\(signal - 34)" }
    return "SIG\(signal)"
}

/// Seconds as microseconds (`WATCHDOG_USEC`, systemd's `...USec` properties), rounded down and
/// clamped: a configured 1e300 s must not trap.
public func clampedMicroseconds(_ seconds: Double) -> UInt64 {
    let microseconds = seconds * 1_000_000
    guard microseconds.isFinite, microseconds < 1.8e19 else { return microseconds > 0 ? UInt64.max : 0 }
    return microseconds > 0 ? UInt64(microseconds) : 0
}

/// Seconds as people write them: `60`, `1.5`.
func formatSeconds(_ seconds: Double) -> String {
    if seconds == seconds.rounded(), abs(seconds) < 1e15 { return String(Int64(seconds)) }
    return String(seconds)
}
