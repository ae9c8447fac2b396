import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// The daemon on the bus: what it exports, how it answers, the contract's errors.
@Suite(.timeLimit(.minutes(2)))
struct DaemonServiceTests {
    /// A service manager that reads no notify message (hung, or slow) fills its socket's queue
    /// (`net.unix.max_dgram_qlen`, 10 by the kernel's default). sd_notify's send then waited, and
    /// the daemon's event loop with it: calls went unanswered and SIGTERM did nothing (CI saw a
    /// Stop time out). Now a message that does not fit waits in the daemon, a newer STATUS=
    /// replacing it, and goes out once the queue has room.
    @Test func aServiceManagerThatReadsNothingCannotStopTheDaemon() async throws {
        let queue = (try? String(contentsOfFile: "/proc/sys/net/unix/max_dgram_qlen", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 10
        try await DaemonFixture.with(shellWorker("w", "exec sleep 1000")) { fixture in
            let daemon = try fixture.daemon
            // Each Disable and Enable changes the status text, sent once per 100 ms at most: enough
            // rounds for more datagrams than the queue holds, none of them read.
            let statuses = min(queue, 100) + 10
            let clock = ContinuousClock()
            let start = clock.now
            var rounds = 0
            while clock.now - start < .milliseconds(110 * statuses) {
                for member in ["Disable", "Enable"] {
                    let call = try await fixture.busctl(
                        ["--timeout=10", "call", DaemonFixture.busName, DaemonFixture.manager, DaemonFixture.interface, member, "s", "w"])
                    #expect(call.status == 0, "round \(rounds): \(member): \(call.stderr)")
                    guard call.status == 0 else { return }
                }
                rounds += 1
            }
            // Read now: what waited is sent, the last STATUS= saying the worker runs.
            var last = ""
            let deadline = clock.now + .seconds(10)
            while !last.hasSuffix("1 running"), clock.now < deadline {
                guard let message = try? await daemon.notifications.receive(timeout: deadline - clock.now) else { break }
                if let status = message.first(where: { $0.key == "STATUS" }) { last = status.value }
            }
            #expect(last.hasSuffix("1 running"), "last STATUS= read: \(last)")
            #expect(WaitStatus.exitCode(try await fixture.stopDaemon()) == 0)
        }
    }

    @Test func startsWorkersAndListsThem() async throws {
        try await DaemonFixture.with(
            execWorker("db-sync", ["/bin/sleep", "1000"], extra: #"run-on = "any""#)
                + shellWorker("quiet", "exec sleep 1000", extra: "enabled = false")
        ) { fixture in
            let workers = try await fixture.listWorkers()
            #expect(workers.map(\.name) == ["db-sync", "quiet"])
            let sync = try #require(workers.first)
            #expect(sync.state == "running" && sync.enabled)
            #expect(sync.path == BgWorkerBus.workerPathPrefix + "db_2dsync")
            #expect(commandLine(of: sync.pid) == "/bin/sleep 1000 ", "the pid is the worker's own process")
            #expect(workers[1] == WorkerRow(name: "quiet", state: "disabled", enabled: false, pid: 0,
                                            path: BgWorkerBus.workerPathPrefix + "quiet"))

            let path = try await fixture.call("GetWorker", "s", ["db-sync"])
            #expect(path.first?.string == BgWorkerBus.workerPathPrefix + "db_2dsync")
            #expect(try await fixture.property("State", worker: "db_2dsync").string == "running")
            #expect(try await fixture.property("Pid", worker: "db_2dsync").uint32 == sync.pid)
            #expect(try await fixture.property("RunOn", worker: "db_2dsync").string == "any")
            #expect(try await fixture.property("LastExit", worker: "db_2dsync").string == "")
            #expect(try await fixture.property("HARole").string == "standalone")
            #expect(try await fixture.property("Runner").string == "process")
            #expect(try await fixture.property("LogLevel").string == "info")
        }
    }
}
