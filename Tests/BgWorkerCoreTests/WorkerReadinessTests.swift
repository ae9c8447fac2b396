import Testing

@testable import BgWorkerCore

/// The process runner's deadlines of the notify protocol, on a fake clock.
@Suite struct WorkerReadinessTests {
    func at(_ seconds: Double) -> MonotonicInstant { .seconds(seconds) }

    func message(_ build: (inout NotifyMessage) -> Void) -> NotifyMessage {
        var message = NotifyMessage()
        build(&message)
        return message
    }

    @Test func startTimeoutWithoutReady() {
        var readiness = WorkerReadiness(ready: .notify, startTimeout: 5, watchdog: 0, stopTimeout: 2, now: at(0))
        #expect(readiness.phase == .starting)
        #expect(readiness.deadline == at(5))
        #expect(readiness.timerFired(now: at(4.999)) == nil)
        #expect(readiness.timerFired(now: at(5)) == .startTimeout)
        #expect(readiness.phase == .expired)
        #expect(readiness.receive(message { $0.ready = true }, now: at(6)).isEmpty)
    }

    @Test func startTimeoutZeroWaitsForever() {
        let readiness = WorkerReadiness(ready: .notify, startTimeout: 0, watchdog: 0, stopTimeout: 2, now: at(0))
        #expect(readiness.deadline == nil)
    }

    @Test func readyEndsTheStartTimeoutAndArmsTheWatchdog() {
        var readiness = WorkerReadiness(ready: .notify, startTimeout: 5, watchdog: 3, stopTimeout: 2, now: at(0))
        #expect(readiness.receive(message { $0.ready = true }, now: at(1)) == [.ready])
        #expect(readiness.phase == .running)
        #expect(readiness.deadline == at(4))
        #expect(readiness.receive(message { $0.ready = true }, now: at(2)).isEmpty)
        #expect(readiness.receive(message { $0.watchdogPing = true }, now: at(3.5)).isEmpty)
        #expect(readiness.deadline == at(6.5))
        // The timer armed for 4 fires early: nothing expired, the deadline is later.
        #expect(readiness.timerFired(now: at(4)) == nil)
        #expect(readiness.timerFired(now: at(6.5)) == .watchdog)
    }

    @Test func anExecWorkerWithAWatchdogIsWatchedFromExec() {
        var readiness = WorkerReadiness(ready: .exec, startTimeout: 5, watchdog: 1, stopTimeout: 2, now: at(10))
        #expect(readiness.phase == .running)
        #expect(readiness.deadline == at(11))
        #expect(readiness.timerFired(now: at(11)) == .watchdog)
    }

    @Test func pingsBeforeReadyDoNotCount() {
        var readiness = WorkerReadiness(ready: .notify, startTimeout: 5, watchdog: 1, stopTimeout: 2, now: at(0))
        _ = readiness.receive(message { $0.watchdogPing = true }, now: at(1))
        #expect(readiness.deadline == at(5))
    }

    @Test func triggerExpiresAtOnceInAnyLivePhase() {
        for ready in ReadyMode.allCases {
            var readiness = WorkerReadiness(ready: ready, startTimeout: 5, watchdog: 0, stopTimeout: 2, now: at(0))
            #expect(readiness.receive(message { $0.watchdogTrigger = true; $0.status = "bye" }, now: at(1))
                == [.status("bye"), .expired(.watchdog)])
            #expect(readiness.phase == .expired)
            #expect(readiness.deadline == nil)
        }
    }

    @Test func watchdogUsecChangesTheIntervalFromNow() {
        var readiness = WorkerReadiness(ready: .exec, startTimeout: 5, watchdog: 10, stopTimeout: 2, now: at(0))
        _ = readiness.receive(message { $0.watchdogUsec = 500_000 }, now: at(1))
        #expect(readiness.watchdog == 0.5)
        #expect(readiness.deadline == at(1.5))
        // Turned on for a worker that had none.
        var plain = WorkerReadiness(ready: .notify, startTimeout: 0, watchdog: 0, stopTimeout: 2, now: at(0))
        _ = plain.receive(message { $0.ready = true }, now: at(1))
        #expect(plain.deadline == nil)
        _ = plain.receive(message { $0.watchdogUsec = 2_000_000 }, now: at(2))
        #expect(plain.deadline == at(4))
    }

    @Test func extendTimeoutOnlyMovesTheStartDeadlineLater() {
        var readiness = WorkerReadiness(ready: .notify, startTimeout: 5, watchdog: 0, stopTimeout: 2, now: at(0))
        _ = readiness.receive(message { $0.extendTimeoutUsec = 1_000_000 }, now: at(1))
        #expect(readiness.deadline == at(5))
        _ = readiness.receive(message { $0.extendTimeoutUsec = 10_000_000 }, now: at(1))
        #expect(readiness.deadline == at(11))
        // Not while running (no runtime limit to extend).
        _ = readiness.receive(message { $0.ready = true }, now: at(2))
        _ = readiness.receive(message { $0.extendTimeoutUsec = 10_000_000 }, now: at(3))
        #expect(readiness.deadline == nil)
    }

    @Test func stoppingArmsTheStopTimeoutAndEndsTheWatchdog() {
        var readiness = WorkerReadiness(ready: .notify, startTimeout: 5, watchdog: 1, stopTimeout: 2, now: at(0))
        _ = readiness.receive(message { $0.ready = true }, now: at(0.5))
        #expect(readiness.receive(message { $0.stopping = true }, now: at(1)) == [.stopping])
        #expect(readiness.deadline == at(3))
        _ = readiness.receive(message { $0.watchdogPing = true }, now: at(2))
        #expect(readiness.deadline == at(3))
        _ = readiness.receive(message { $0.extendTimeoutUsec = 5_000_000 }, now: at(2))
        #expect(readiness.deadline == at(7))
        #expect(readiness.timerFired(now: at(7)) == .stopTimeout)
    }

    @Test func reloadingKeepsTheWatchdog() {
        var readiness = WorkerReadiness(ready: .exec, startTimeout: 5, watchdog: 2, stopTimeout: 2, now: at(0))
        #expect(readiness.receive(message { $0.reloading = true }, now: at(1)) == [.reloading])
        #expect(readiness.phase == .reloading)
        #expect(readiness.deadline == at(2))
        _ = readiness.receive(message { $0.watchdogPing = true }, now: at(1.5))
        #expect(readiness.deadline == at(3.5))
        #expect(readiness.receive(message { $0.ready = true }, now: at(2)) == [.ready])
        #expect(readiness.phase == .running)
    }

    @Test func stopDisarmsEverything() {
        var readiness = WorkerReadiness(ready: .notify, startTimeout: 5, watchdog: 1, stopTimeout: 2, now: at(0))
        readiness.stop()
        #expect(readiness.deadline == nil)
        #expect(readiness.timerFired(now: at(100)) == nil)
        #expect(readiness.receive(message { $0.watchdogTrigger = true }, now: at(1)).isEmpty)
    }

    /// Any sequence of messages and timer firings on a fake clock: the deadline never lies in
    /// the past of the last event while live, an expiry happens at most once, nothing after it.
    @Test func randomSequencesKeepTheRules() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            var now = 0.0
            var readiness = WorkerReadiness(
                ready: Bool.random(using: &rng) ? .notify : .exec, startTimeout: [0, 1, 5].randomElement(using: &rng)!,
                watchdog: [0, 0.5, 2].randomElement(using: &rng)!, stopTimeout: [0, 1].randomElement(using: &rng)!, now: at(0))
            var expiries = 0
            for _ in 0..<40 {
                now += [0, 0.1, 0.7, 3].randomElement(using: &rng)!
                if Bool.random(using: &rng) {
                    let effects = readiness.receive(message {
                        $0.ready = Bool.random(using: &rng)
                        $0.watchdogPing = Bool.random(using: &rng)
                        $0.reloading = Int.random(in: 0..<6, using: &rng) == 0
                        $0.stopping = Int.random(in: 0..<10, using: &rng) == 0
                        $0.watchdogTrigger = Int.random(in: 0..<30, using: &rng) == 0
                        $0.extendTimeoutUsec = Bool.random(using: &rng) ? UInt64.random(in: 0...3_000_000, using: &rng) : nil
                    }, now: at(now))
                    expiries += effects.filter { if case .expired = $0 { true } else { false } }.count
                } else if let due = readiness.deadline, due <= at(now) {
                    if readiness.timerFired(now: at(now)) != nil { expiries += 1 }
                }
                if readiness.phase == .expired { #expect(readiness.deadline == nil) }
                #expect(expiries <= 1)
            }
        }
    }
}
