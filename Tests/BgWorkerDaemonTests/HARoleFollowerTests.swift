import BgWorkerCore
@testable import BgWorkerDaemon
import TestSupport
import Testing

/// The role source's decisions without a bus: specific interleavings, then a seeded random
/// simulation of a manager, the bus's ordering and our reads, checking that the last report is
/// always the manager's role once everything is delivered.
@Suite struct HARoleFollowerTests {
    typealias Action = RoleFollowerState.Action

    func roles(_ actions: [Action]) -> [HARole] {
        actions.compactMap { if case .report(let r) = $0 { r.role } else { nil } }
    }

    @Test func noOwnerIsUnknownAndAnOwnerIsRead() {
        var s = RoleFollowerState(name: "org.example.HAManager")
        let first = s.start(owner: nil)
        #expect(first == [.report(HARoleReport(.unknown, why: "org.example.HAManager has no owner"))])
        #expect(s.ownerChanged(to: ":1.5") == [.read])
        s.readStarted(id: 1)
        #expect(roles(s.readFinished(id: 1, role: .primary, why: "Role primary")) == [.primary])
        #expect(roles(s.ownerChanged(to: nil)) == [.unknown])
    }

    @Test func aStartWithAnOwnerReadsAndReportsNothingYet() {
        var s = RoleFollowerState(name: "n")
        #expect(s.start(owner: ":1.1") == [.read])
        s.readStarted(id: 7)
        #expect(roles(s.readFinished(id: 7, role: .secondary, why: "")) == [.secondary])
    }

    @Test func onlyChangesAreReported() {
        var s = RoleFollowerState(name: "n")
        _ = s.start(owner: ":1.1")
        s.readStarted(id: 1)
        #expect(roles(s.readFinished(id: 1, role: .primary, why: "")) == [.primary])
        #expect(roles(s.signal(.role(.primary, why: ""))) == [])
        #expect(roles(s.signal(.role(.secondary, why: ""))) == [.secondary])
        #expect(roles(s.signal(.role(.unknown, why: ""))) == [.unknown])
        #expect(roles(s.ownerChanged(to: nil)) == [])
    }

    @Test func aSignalDuringTheReadWinsOverTheReadsResult() {
        var s = RoleFollowerState(name: "n")
        _ = s.start(owner: ":1.1")
        s.readStarted(id: 1)
        #expect(roles(s.signal(.role(.secondary, why: "RoleChanged secondary"))) == [.secondary])
        // The reply was taken before the change (or says the same): it must not undo the signal.
        #expect(s.readFinished(id: 1, role: .primary, why: "Role primary (stale)") == [])
        #expect(s.lastReported == .secondary)
    }

    @Test func aReplyBeforeTheSignalIsAppliedAndThenTheSignal() {
        var s = RoleFollowerState(name: "n")
        _ = s.start(owner: ":1.1")
        s.readStarted(id: 1)
        #expect(roles(s.readFinished(id: 1, role: .primary, why: "")) == [.primary])
        #expect(roles(s.signal(.role(.secondary, why: ""))) == [.secondary])
    }

    @Test func aReplyForAnOwnerThatLeftIsDropped() {
        var s = RoleFollowerState(name: "n")
        _ = s.start(owner: ":1.1")
        s.readStarted(id: 1)
        #expect(roles(s.ownerChanged(to: nil)) == [.unknown])
        #expect(s.ownerChanged(to: ":1.2") == [.read])
        s.readStarted(id: 2)
        #expect(s.readFinished(id: 1, role: .primary, why: "from :1.1") == [])
        #expect(roles(s.readFinished(id: 2, role: .secondary, why: "from :1.2")) == [.secondary])
    }

    @Test func aReadAgainSupersedesTheReadInFlight() {
        var s = RoleFollowerState(name: "org.keepalived.Vrrp1")
        _ = s.start(owner: ":1.1")
        s.readStarted(id: 1)
        #expect(s.signal(.readAgain(why: "keepalived VrrpReloaded")) == [.read])
        s.readStarted(id: 2)
        #expect(s.readFinished(id: 1, role: .primary, why: "") == [])
        #expect(roles(s.readFinished(id: 2, role: .secondary, why: "")) == [.secondary])
    }

    @Test func ignoredSignalsOnlyWarn() {
        var s = RoleFollowerState(name: "n")
        _ = s.start(owner: ":1.1")
        #expect(s.ignoredSignal(sender: ":1.9", member: "RoleChanged", owner: ":1.1")
                == [.warnIgnored(sender: ":1.9", member: "RoleChanged", owner: ":1.1")])
        #expect(s.pendingRead == nil && s.lastReported == nil)
    }

    // MARK: Simulation

    /// One run: managers come and go and change roles; our reads reach the owner and are
    /// answered at arbitrary later points (from the state when answered, or — a threaded
    /// manager — from a snapshot taken on receipt); the bus delivers each manager's messages
    /// in order; our consumer lags behind the connection by arbitrary amounts.
    func simulate(seed: UInt64, snapshotting: Bool) -> (reported: HARole?, truth: HARole, trace: [String]) {
        enum Event { case owner(String?), signal(HARole), reply(id: UInt64, role: HARole) }
        struct Get { var id: UInt64; var snapshot: HARole; var manager: Int }
        var rng = SeededRandom(seed: seed)
        var trace: [String] = []
        var stream: [Event] = []           // received by the connection, not yet consumed
        var owner: String? = nil           // as the connection knows it (ahead of the consumer)
        var role: HARole = .primary        // the owner's role
        var lastRoles: [Int: HARole] = [:] // of managers that released the name but still answer
        var gets: [Get] = []               // our reads, received by the owner, not yet answered
        var nextID: UInt64 = 0
        var managers = 0
        var state = RoleFollowerState(name: "m")
        let choices: [HARole] = [.primary, .secondary, .unknown]

        func carryOut(_ actions: [Action]) {
            for case .read in actions {
                nextID += 1
                state.readStarted(id: nextID)
                if owner == nil {
                    stream.append(.reply(id: nextID, role: .unknown))   // NameHasNoOwner at once
                } else {
                    gets.append(Get(id: nextID, snapshot: role, manager: managers))
                }
                trace.append("read \(nextID) -> \(owner ?? "nobody")")
            }
        }
        func consume() {
            guard !stream.isEmpty else { return }
            let event = stream.removeFirst()
            switch event {
            case .owner(let o): trace.append("consume owner \(o ?? "none")"); carryOut(state.ownerChanged(to: o))
            case .signal(let r): trace.append("consume signal \(r)"); carryOut(state.signal(.role(r, why: "")))
            case .reply(let id, let r): trace.append("consume reply \(id) \(r)"); carryOut(state.readFinished(id: id, role: r, why: ""))
            }
        }
        func answerOne() {
            guard !gets.isEmpty else { return }
            let get = gets.removeFirst()
            let current = get.manager == managers && owner != nil ? role : lastRoles[get.manager] ?? .unknown
            let answer = snapshotting ? get.snapshot : current
            trace.append("owner answers \(get.id) with \(answer)")
            stream.append(.reply(id: get.id, role: answer))
        }

        managers += 1
        owner = ":1.\(managers)"
        carryOut(state.start(owner: owner))
        for _ in 0..<(20 + rng.below(40)) {
            switch rng.below(10) {
            case 0, 1, 2:
                if owner != nil {
                    role = choices[rng.below(3)]
                    trace.append("owner changes to \(role)")
                    stream.append(.signal(role))
                }
            case 3, 4:
                answerOne()
            case 5:
                if owner != nil {
                    owner = nil
                    if rng.below(2) == 0 {
                        trace.append("owner disconnects")
                        // The bus answers the calls the owner leaves unanswered with an error.
                        for get in gets { stream.append(.reply(id: get.id, role: .unknown)) }
                        gets = []
                    } else {
                        // It only releases the name, and answers what it was asked later.
                        trace.append("owner releases the name")
                        lastRoles[managers] = role
                    }
                    stream.append(.owner(nil))
                } else {
                    managers += 1
                    owner = ":1.\(managers)"
                    role = choices[rng.below(3)]
                    trace.append("\(owner!) arrives as \(role)")
                    stream.append(.owner(owner))
                }
            default:
                for _ in 0...rng.below(3) { consume() }
            }
        }
        while !stream.isEmpty || !gets.isEmpty {
            if stream.isEmpty { answerOne() } else { consume() }
        }
        return (state.lastReported, owner == nil ? .unknown : role, trace)
    }

    @Test(arguments: [false, true])
    func theLastReportIsTheManagersRole(snapshotting: Bool) {
        for seed in UInt64(1)...3000 {
            let run = simulate(seed: seed, snapshotting: snapshotting)
            if run.reported != run.truth {
                let reported = run.reported.map(\.rawValue) ?? "nothing"
                let trace = run.trace.joined(separator: "\n")
                Issue.record("seed \(seed): reported \(reported), manager is \(run.truth)\n\(trace)")
                return
            }
        }
    }
}
