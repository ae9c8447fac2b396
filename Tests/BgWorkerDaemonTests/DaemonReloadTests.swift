import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// Reload (the method and SIGHUP): only what changed is touched; an invalid configuration
/// changes nothing.
@Suite(.timeLimit(.minutes(2)))
struct DaemonReloadTests {
    static let alpha = execWorker("alpha", ["/bin/sleep", "1000"])
    static let beta = shellWorker("beta", "exec sleep 1000")

    @Test func aReloadThatChangesOneWorkerRestartsOnlyThatOne() async throws {
        try await DaemonFixture.with(Self.alpha + Self.beta) { fixture in
            let before = try await fixture.listWorkers()
            let monitor = try await fixture.monitor()
            try fixture.writeConfiguration(execWorker("alpha", ["/bin/sleep", "1001"]) + Self.beta)
            let daemon = try await fixture.daemonUniqueName()
            try await fixture.call("Reload")

            // The reply comes once the new configuration is applied: the stop went out before it;
            // the new start follows the old process's exit, after the reply.
            let applied = try await monitor.changes(untilReplyTo: "Reload", daemon: daemon)
            #expect(applied.reply.type == "method_return")
            let stopping = try #require(applied.changes.first)
            #expect(stopping == StateChange(name: "alpha", state: "stopping", pid: before[0].pid, reason: "configuration changed"))
            #expect(applied.changes.allSatisfy { $0.name == "alpha" })
            var running = applied.changes.first { $0.state == "running" }
            if running == nil { running = try await monitor.stateChange(of: "alpha", to: "running") }
            let runningPid = try #require(running?.pid)
            #expect(commandLine(of: runningPid) == "/bin/sleep 1001 ")
            // beta: the same process, and no signal about it anywhere in between.
            let after = try await fixture.listWorkers()
            #expect(after[1] == before[1])
            #expect(after[0].pid == runningPid && after[0].pid != before[0].pid)
            try await fixture.call("Disable", "s", ["alpha"])
            let next = try await monitor.waitFor("the next WorkerStateChanged") { StateChange($0) != nil }
            #expect(StateChange(next)?.name == "alpha", "no signal about beta: \(next)")
        }
    }

    @Test func aReloadAddsAndRemovesWorkersAndTheirObjects() async throws {
        try await DaemonFixture.with(Self.alpha + Self.beta) { fixture in
            let beta = try await fixture.worker("beta")
            let monitor = try await fixture.monitor()
            // gamma arrives in a drop-in; beta leaves.
            try FileManager.default.createDirectory(atPath: fixture.directory.file("workers.d"), withIntermediateDirectories: true)
            try shellWorker("gamma", "exec sleep 1000").write(
                toFile: fixture.directory.file("workers.d/10-gamma.toml"), atomically: true, encoding: .utf8)
            try fixture.writeConfiguration(Self.alpha)
            try await fixture.call("Reload")

            // Both happen, in either order: beta's object goes once its process is gone; gamma starts.
            var removedBy: String?
            var gamma: StateChange?
            while removedBy == nil || gamma == nil {
                let message = try await monitor.waitFor("InterfacesRemoved of beta and gamma running") { message in
                    (message.member == "InterfacesRemoved" && message.body.first?.string == BgWorkerBus.workerPathPrefix + "beta")
                        || StateChange(message).map { $0.name == "gamma" && $0.state == "running" } == true
                }
                if message.member == "InterfacesRemoved" { removedBy = message.path } else { gamma = StateChange(message) }
            }
            #expect(removedBy == DaemonFixture.manager)
            #expect(!isAlive(Int32(beta.pid)))
            let workers = try await fixture.listWorkers()
            #expect(workers.map(\.name) == ["alpha", "gamma"])
            #expect(workers[1].pid == gamma?.pid)
            let gone = try await fixture.dbusSend("GetWorker", ["string:beta"])
            #expect(gone.output.contains(BgWorkerBus.ErrorName.noSuchWorker), "\(gone.output)")
        }
    }

    @Test func aBrokenReloadChangesNothingAndSaysWhy() async throws {
        try await DaemonFixture.with(Self.alpha + Self.beta) { fixture in
            let before = try await fixture.listWorkers()
            try fixture.writeConfiguration(
                shellWorker("alpha", "exec sleep 1001", extra: "restart-dealy = 2") + shellWorker("delta", "exec sleep 1000"))
            let result = try await fixture.dbusSend("Reload")
            #expect(result.status != 0)
            #expect(result.output.contains("Error \(BgWorkerBus.ErrorName.invalidConfig)"), "\(result.output)")
            #expect(result.output.contains("\(fixture.configPath):"), "the reason names the file and line: \(result.output)")
            #expect(result.output.contains("restart-dealy"), "\(result.output)")
            #expect(try await fixture.listWorkers() == before)

            // SIGHUP with the same file: logged, nothing changes either.
            let daemon = try fixture.daemon
            daemon.signal(SIGHUP)
            try await daemon.notifications.waitFor("READY", value: "1")
            #expect(try await fixture.listWorkers() == before)
        }
    }

    /// Issue 8: 100,000 nested arrays in a Reload overflowed the stack (NoReply, every worker
    /// died); drop-in errors were not reported beside the main file's.
    @Test func aHostileReloadIsRefusedWithEveryFilesErrors() async throws {
        try await DaemonFixture.with(Self.alpha + Self.beta) { fixture in
            let before = try await fixture.listWorkers()
            let nested = "environment = " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
            try fixture.writeConfiguration(shellWorker("alpha", "exec sleep 1000", extra: nested) + Self.beta)
            try FileManager.default.createDirectory(atPath: fixture.directory.file("workers.d"), withIntermediateDirectories: true)
            try "[worker.gamma]\nexec = 1\n".write(
                toFile: fixture.directory.file("workers.d/10-gamma.toml"), atomically: true, encoding: .utf8)
            let result = try await fixture.dbusSend("Reload")
            #expect(result.status != 0)
            #expect(result.output.contains("Error \(BgWorkerBus.ErrorName.invalidConfig)"), "\(result.output)")
            #expect(result.output.contains("\(fixture.configPath):"), "\(result.output)")
            #expect(result.output.contains("more than 128 levels"), "\(result.output)")
            #expect(result.output.contains(fixture.directory.file("workers.d/10-gamma.toml") + ":2: [worker.gamma]"), "\(result.output)")
            #expect(try await fixture.listWorkers() == before)
        }
    }

    @Test func sighupReloadsAndAConfiguredEnabledChangeIsTheNewIntent() async throws {
        try await DaemonFixture.with(Self.alpha + Self.beta) { fixture in
            let monitor = try await fixture.monitor()
            try fixture.writeConfiguration(
                Self.alpha + shellWorker("beta", "exec sleep 1000", extra: "enabled = false"))
            try fixture.daemon.signal(SIGHUP)
            let stopping = try await monitor.stateChange(of: "beta", to: "stopping")
            #expect(stopping.reason == "disabled in configuration")
            _ = try await monitor.stateChange(of: "beta", to: "disabled")
            #expect(try await fixture.property("Enabled", worker: "beta").bool == false)
            #expect(try await fixture.worker("alpha").state == "running")
            // Neither the signal nor anything before it started libdispatch (its pool monitor
            // would wake the idle daemon every second; docs/design.md).
            #expect(libdispatchThreads(of: try fixture.daemon.process.pid) == [])
        }
    }

    /// A Reload that switches `[ha] source` from `none` to `dbus` (with no HA manager on the
    /// bus) and adds a `run-on = "primary"` worker: the role is `unknown` before the added
    /// worker could start, so it never runs (no `starting`, and its marker file never appears),
    /// and the primary worker that ran under `standalone` stops.
    @Test func aReloadThatSwitchesTheHASourceNeverStartsAnAddedPrimaryWorker() async throws {
        let standalone = "[ha]\nsource = \"none\"\n\n" + shellWorker("old", "exec sleep 1000", extra: "run-on = \"primary\"")
        try await DaemonFixture.with(standalone) { fixture in
            #expect(try await fixture.property("HARole").string == "standalone")
            #expect(try await fixture.worker("old").state == "running")
            let marker = fixture.directory.file("fresh-ran")
            let monitor = try await fixture.monitor()
            let daemon = try await fixture.daemonUniqueName()
            try fixture.writeConfiguration(
                "[ha]\nsource = \"dbus\"\n\n" + shellWorker("old", "exec sleep 1000", extra: "run-on = \"primary\"")
                    + shellWorker("fresh", "touch '\(marker)'; exec sleep 1000", extra: "run-on = \"primary\""))
            try await fixture.call("Reload")

            var signals: [String] = []
            while let message = try await monitor.next(timeout: .seconds(10)) {
                if message.type == "signal", message.sender == daemon, let member = message.member,
                   member == "WorkerStateChanged" || member == "HARoleChanged" {
                    signals.append(member + " " + message.body.compactMap(\.string).joined(separator: " "))
                }
                if message.type == "method_return", message.sender == daemon { break }
            }
            #expect(signals.first == "HARoleChanged unknown", "\(signals)")
            #expect(!signals.contains { $0.hasPrefix("WorkerStateChanged fresh") }, "\(signals)")
            #expect(signals.contains { $0.hasPrefix("WorkerStateChanged old stopping") }, "\(signals)")
            #expect(try await fixture.property("HARole").string == "unknown")
            _ = try await monitor.waitUntil(fixture, worker: "old", is: "standby")
            let fresh = try await fixture.worker("fresh")
            #expect(fresh.state == "standby" && fresh.pid == 0)
            #expect(!FileManager.default.fileExists(atPath: marker), "the added primary worker ran")
        }
    }
}

/// Threads of `pid` named by libdispatch (`com.apple.root.*-qos*`, cut to 15 bytes by the kernel).
func libdispatchThreads(of pid: Int32) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return names.compactMap { tid in
        (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }.filter { $0.contains("qos") || $0.hasPrefix("com.apple") }
}
