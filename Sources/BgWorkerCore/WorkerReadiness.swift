// One worker process's side of the notify protocol, as the process runner keeps it: which phase
// it is in, and the one deadline that applies (start-timeout, watchdog, or the stop after
// STOPPING=1). Pure: the runner feeds messages and its timer, and carries out the effects.
// See docs/notify.md.

/// What a notify message or a deadline means for the worker.
public enum ReadinessEffect: Sendable, Equatable {
    /// `READY=1` while starting or reloading: the worker is `running`.
    case ready
    /// `RELOADING=1` while running.
    case reloading
    /// `STOPPING=1`: it is on its way out by itself.
    case stopping
    /// `STATUS=`: its new status text.
    case status(String)
    /// A deadline passed or the worker asked for it: act as `ReadinessExpiry` says.
    case expired(ReadinessExpiry)
}

public enum ReadinessExpiry: Sendable, Equatable {
    /// No `READY=1` within `start-timeout`: stop the group (SIGTERM, then SIGKILL); `LastExit`
    /// `start-timeout`.
    case startTimeout
    /// A missed watchdog deadline or `WATCHDOG=trigger`: SIGABRT to the main process, SIGKILL to
    /// the group after `stop-timeout`; `LastExit` `watchdog`.
    case watchdog
    /// `stop-timeout` passed since `STOPPING=1` and the process still runs: SIGKILL the group.
    case stopTimeout
}

public struct WorkerReadiness: Sendable, Equatable {
    public enum Phase: Sendable, Equatable {
        /// Waiting for `READY=1` (`ready = "notify"`).
        case starting
        case running
        /// Between `RELOADING=1` and `READY=1`; the watchdog still applies.
        case reloading
        /// After `STOPPING=1`.
        case stopping
        /// A deadline expired; everything the process sends from now on is ignored.
        case expired
    }

    public private(set) var phase: Phase
    /// When the current deadline passes; nil: none applies.
    public private(set) var deadline: MonotonicInstant?
    /// Seconds between required `WATCHDOG=1`; 0 is off. `WATCHDOG_USEC=` changes it.
    public private(set) var watchdog: Double
    private let stopTimeout: Double

    /// At the exec of the process (`now`).
    public init(ready: ReadyMode, startTimeout: Double, watchdog: Double, stopTimeout: Double, now: MonotonicInstant) {
        self.watchdog = watchdog
        self.stopTimeout = stopTimeout
        if ready == .notify {
            phase = .starting
            deadline = startTimeout > 0 ? now.advanced(bySeconds: startTimeout) : nil
        } else {
            phase = .running
            deadline = nil
            armWatchdog(now: now)
        }
    }

    public init(_ definition: WorkerDefinition, now: MonotonicInstant) {
        self.init(
            ready: definition.ready, startTimeout: definition.startTimeout, watchdog: definition.watchdog,
            stopTimeout: definition.stopTimeout, now: now)
    }

    /// One message of the process, in the order received.
    public mutating func receive(_ message: NotifyMessage, now: MonotonicInstant) -> [ReadinessEffect] {
        guard phase != .expired else { return [] }
        var effects: [ReadinessEffect] = []
        if let status = message.status { effects.append(.status(status)) }
        // systemd's order: a new watchdog interval first, then the keep-alive, then the state.
        if let usec = message.watchdogUsec {
            watchdog = Double(usec) / 1_000_000
            if phase == .running || phase == .reloading { armWatchdog(now: now) }
        }
        if message.watchdogTrigger {
            expire()
            return effects + [.expired(.watchdog)]
        }
        if message.watchdogPing, phase == .running || phase == .reloading { armWatchdog(now: now) }
        if message.stopping, phase != .stopping {
            phase = .stopping
            deadline = stopTimeout > 0 ? now.advanced(bySeconds: stopTimeout) : now
            effects.append(.stopping)
        } else if message.reloading, phase == .running {
            phase = .reloading
            effects.append(.reloading)
        } else if message.ready, phase == .starting || phase == .reloading {
            if phase == .starting { deadline = nil }
            phase = .running
            armWatchdog(now: now)
            effects.append(.ready)
        }
        // Later than the deadline only: as systemd, it never brings the deadline closer.
        if let usec = message.extendTimeoutUsec, phase == .starting || phase == .stopping, let current = deadline {
            let extended = now.advanced(bySeconds: Double(usec) / 1_000_000)
            if extended > current { deadline = extended }
        }
        return effects
    }

    /// The runner's timer fired at `now`: what expired, or nil when the deadline moved later
    /// meanwhile (arm the timer again at `deadline`).
    public mutating func timerFired(now: MonotonicInstant) -> ReadinessExpiry? {
        guard let due = deadline, now >= due else { return nil }
        let expiry: ReadinessExpiry
        switch phase {
        case .starting: expiry = .startTimeout
        case .running, .reloading: expiry = .watchdog
        case .stopping: expiry = .stopTimeout
        case .expired: return nil
        }
        expire()
        return expiry
    }

    /// The runner stops the process on its own account (a `stop`): no deadline of ours applies.
    public mutating func stop() { expire() }

    private mutating func expire() {
        phase = .expired
        deadline = nil
    }

    private mutating func armWatchdog(now: MonotonicInstant) {
        deadline = watchdog > 0 ? now.advanced(bySeconds: watchdog) : nil
    }
}
