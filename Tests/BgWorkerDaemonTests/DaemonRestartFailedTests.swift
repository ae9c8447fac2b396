import BgWorkerCore
import Foundation
import Glibc
import TestSupport
import Testing

/// What a daemon restart does to a `failed` worker (issue 16): it starts again, with `Restarts`
/// 0, as the seed's package reload did and as systemd resets its units at boot. The systemd
/// runner's version is in `SystemdScaleTests`.
@Suite(.timeLimit(.minutes(2)))
struct DaemonRestartFailedTests {
    @Test func aFailedWorkerRunsAgainAfterADaemonRestartWithRestartsZero() async throws {
        try await DaemonFixture.with("", start: false) { f in
            let marker = f.directory.file("fail")
            _ = FileManager.default.createFile(atPath: marker, contents: nil)
            try f.writeConfiguration(shellWorker("flaky", "test -e '\(marker)' && exit 3; exec sleep 300",
                                                 extra: "restart-delay = 0.05\nstart-limit-burst = 2\nstart-limit-interval = 60"))
            let monitor = try await f.monitor()
            try await f.startDaemon()
            _ = try await monitor.waitUntil(f, worker: "flaky", is: "failed")
            #expect(try await f.property("Restarts", worker: "flaky").uint32 ?? 0 > 0)

            try await f.stopDaemon()
            try FileManager.default.removeItem(atPath: marker)
            try await f.startDaemon()
            let row = try await f.worker("flaky")
            #expect(row.state == "running" && row.pid != 0, "\(row)")
            #expect(try await f.property("Restarts", worker: "flaky").uint32 == 0)
        }
    }
}
