import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// The daemon on the bus: what it exports, how it answers, the contract's errors.
@Suite(.timeLimit(.minutes(2)))
struct DaemonServiceTests {
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
