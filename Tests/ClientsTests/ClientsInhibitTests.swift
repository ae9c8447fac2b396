import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// `bgworkerctl inhibit`, `maintenance` and the Maintenance line of `status`, against the real
/// daemon (process runner) on a private bus.
@Suite("bgworkerctl inhibit and maintenance", .timeLimit(.minutes(2)))
struct ClientsInhibitTests {
    static let workers = """
        [worker.held]
        exec = ["/bin/sleep", "1000"]
        stop-timeout = 2.0

        [worker.exempt]
        exec = ["/bin/sleep", "1000"]
        run-during-maintenance = true
        """

    /// Waits for the Maintenance PropertiesChanged with `value`.
    static func maintenance(_ monitor: BusMonitor, is value: Bool) async throws {
        _ = try await monitor.waitFor("Maintenance \(value)", timeout: .seconds(20)) { message in
            guard message.member == "PropertiesChanged", message.body.count >= 2,
                  case .object(let changed) = message.body[1] else { return false }
            return changed["Maintenance"]?.unwrapped.bool == value
        }
    }

    @Test func inhibitRunsTheCommandInMaintenanceAndExitsWithItsStatus() async throws {
        try await ClientsEndToEndTests.Setup.with({ _ in Self.workers }) { setup in
            let ctl = builtExecutablePath("bgworkerctl")
            let monitor = try await BusMonitor(address: setup.bus.unixAddress, matches: [
                "type='signal',sender='\(BgWorkerBus.busName)',member='PropertiesChanged'"])
            defer { Task { await monitor.stop() } }
            var r = try await setup.ctl(["maintenance"])
            #expect(r.status == 0 && r.stdout == "No inhibitors: maintenance mode is off.", "\(r)")
            r = try await setup.ctl(["status"])
            #expect(r.stdout.contains("Maintenance: no"), "\(r.stdout)")

            // COMMAND runs once `held` is gone; it sees maintenance and holds no inhibitor fd of its own.
            let inside = """
                "$0" --bus "$1" status; "$0" --bus "$1" maintenance; "$0" --bus "$1" maintenance --json
                /usr/bin/python3 -c 'import os; print("fds", sorted(int(f) for f in os.listdir("/proc/%d/fd" % os.getppid())))'
                exit 3
                """
            r = try await run([ctl, "--bus", setup.bus.address, "inhibit", "--who", "upgrader", "--why", "apt upgrade", "--",
                               "/bin/sh", "-c", inside, ctl, setup.bus.address], environment: ["TZ": "UTC"])
            #expect(r.status == 3, "\(r)")
            #expect(r.stderr.isEmpty, "\(r.stderr)")
            let lines = r.stdout.split(separator: "\n").map(String.init)
            #expect(lines.contains("Maintenance: yes (upgrader: apt upgrade)"), "\(r.stdout)")
            #expect(lines.contains { $0.hasPrefix("held ") && $0.contains(" standby ") }, "\(r.stdout)")
            #expect(lines.contains { $0.hasPrefix("exempt ") && $0.contains(" running ") }, "\(r.stdout)")
            #expect(lines.contains { $0.hasPrefix("WHO ") && $0.contains("WHY") && $0.contains("SINCE") }, "\(r.stdout)")
            #expect(lines.contains { $0.hasPrefix("upgrader  apt upgrade  0 ") }, "\(r.stdout)")
            #expect(lines.contains("fds [0, 1, 2]"), "COMMAND inherits no inhibitor: \(r.stdout)")
            let json = try #require(lines.first { $0.hasPrefix("{") })
            let top = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            #expect(top["maintenance"] as? Bool == true)
            let rows = try #require(top["inhibitors"] as? [[String: Any]])
            #expect(rows.count == 1 && rows.first?["who"] as? String == "upgrader" && rows.first?["why"] as? String == "apt upgrade")

            // bgworkerctl is gone: so is maintenance, and held runs again.
            try await Self.maintenance(monitor, is: false)
            try await waitFor("held runs again") { try await setup.worker("held")["state"] as? String == "running" }
            r = try await setup.ctl(["status", "--json"])
            let status = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            #expect(status["maintenance"] as? Bool == false)

            // Usage: a command is needed; one that cannot run is 127.
            r = try await run([ctl, "--bus", setup.bus.address, "inhibit"])
            #expect(r.status == 1 && r.stderr.contains("needs a command"), "\(r)")
            r = try await run([ctl, "--bus", setup.bus.address, "inhibit", "--", "/nonexistent/tool"])
            #expect(r.status == 127 && r.stderr.contains("cannot run /nonexistent/tool"), "\(r)")
            try await Self.maintenance(monitor, is: false)
        }
    }

    /// scripts/adversarial/maintenance.py step 8: any client that may Inhibit chooses who and why;
    /// `maintenance` and `status` printed them raw (ESC sequences, CR, newlines reached the terminal).
    @Test func maintenanceAndStatusEscapeControlCharactersOfWhoAndWhy() async throws {
        try await ClientsEndToEndTests.Setup.with({ _ in Self.workers }) { setup in
            let ctl = builtExecutablePath("bgworkerctl")
            let r = try await run([ctl, "--bus", setup.bus.address, "inhibit", "--who", "evil\u{1B}[31m\r", "--why", "two\nlines\u{7}", "--",
                                   "/bin/sh", "-c", #""$0" --bus "$1" status; "$0" --bus "$1" maintenance"#, ctl, setup.bus.address])
            #expect(r.status == 0, "\(r)")
            #expect(!r.stdout.unicodeScalars.contains { $0 == "\u{1B}" || $0 == "\r" || $0 == "\u{7}" }, "\(r.stdout)")
            #expect(r.stdout.contains(#"Maintenance: yes (evil\x1b[31m\x0d: two\x0alines\x07)"#), "\(r.stdout)")
            #expect(r.stdout.split(separator: "\n").contains { $0.hasPrefix(#"evil\x1b[31m\x0d  two\x0alines\x07  0 "#) }, "\(r.stdout)")
            // A --who past 256 bytes is cut between characters, not inside `é` (InvalidArgs then).
            let long = try await run([ctl, "--bus", setup.bus.address, "inhibit", "--who", String(repeating: "a", count: 255) + "é", "--", "/bin/true"])
            #expect(long.status == 0, "\(long)")
        }
    }

    @Test func sigtermReachesTheCommandAndItsStatusIsTheExitStatus() async throws {
        try await ClientsEndToEndTests.Setup.with({ _ in Self.workers }) { setup in
            let ctl = builtExecutablePath("bgworkerctl")
            let process = try ChildProcess([ctl, "--bus", setup.bus.address, "inhibit", "--", "/bin/sh", "-c",
                                            "trap 'kill $!; exit 7' TERM; echo ready; sleep 1000 & wait"])
            // Whatever happens, nothing of it outlives the test (COMMAND is in bgworkerctl's group).
            defer { process.signalGroup(SIGKILL) }
            #expect(try await process.readLine(timeout: .seconds(30)) == "ready")
            #expect(try await setup.worker("held")["state"] as? String == "standby")
            process.signal(SIGTERM)
            let status = try await process.waitForExit(timeout: .seconds(20))
            #expect(WaitStatus.exitCode(status) == 7, "wait status \(status)")
            // Killed by a signal: 128+N.
            let killed = try await run([ctl, "--bus", setup.bus.address, "inhibit", "--", "/bin/sh", "-c", "kill -KILL $$"])
            #expect(killed.status == 128 + SIGKILL, "\(killed)")
        }
    }
}

/// Retries `check` (a read from the daemon) until it holds.
func waitFor(_ what: String, timeout: Duration = .seconds(15), _ check: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !check() {
        guard ContinuousClock.now < deadline else { throw TestProcessError("\(what): not within \(timeout)") }
        await Task.yield()
    }
}
