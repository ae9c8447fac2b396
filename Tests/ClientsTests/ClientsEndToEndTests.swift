import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// The clients against the real bgworkerd (the built executable, a child of the test) on a
/// private bus, with real workers: /bin/sleep, bgworker-example, and bgworker-ha-sim as the HA
/// manager.
@Suite("clients end to end with bgworkerd")
struct ClientsEndToEndTests {
    /// A bus, a folder, the daemon with a configuration, and bgworkerctl on that bus.
    struct Setup {
        let bus: PrivateBus
        let directory: TemporaryDirectory
        let daemon: DaemonProcess

        static func with(_ configuration: (TemporaryDirectory) -> String, _ body: (Setup) async throws -> Void) async throws {
            let directory = try TemporaryDirectory(prefix: "bgw-e2e")
            try await withCleanup(try await PrivateBus(directory: directory), cleanup: { await $0.stop() }) { bus in
                let configPath = directory.file("bgworkerd.toml")
                try """
                    [daemon]
                    state-directory = "\(directory.file("state"))"

                    \(configuration(directory))
                    """.write(toFile: configPath, atomically: true, encoding: .utf8)
                let daemon = try await DaemonProcess(bus: bus, configPath: configPath, arguments: ["--runner", "process"],
                                                     runtimeDirectory: directory.file("run"))
                try await withCleanup(daemon, cleanup: { await $0.process.terminate(grace: .seconds(10)) }) { daemon in
                    do {
                        try await body(Setup(bus: bus, directory: directory, daemon: daemon))
                    } catch {
                        print("--- bgworkerd log ---\n\(daemon.log)")
                        throw error
                    }
                }
            }
        }

        func ctl(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await ClientsTests.ctl(bus, arguments)
        }

        /// `status NAME --json` as a dictionary.
        func worker(_ name: String) async throws -> [String: Any] {
            let r = try await ctl(["status", name, "--json"])
            guard r.status == 0, let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
                throw TestProcessError("status \(name): \(r)")
            }
            return object
        }

        /// `bgworkerctl watch`, started and past its first line (so it sees what follows).
        func watch() async throws -> (process: ChildProcess, lines: OutputLines) {
            let process = try ChildProcess([builtExecutablePath("bgworkerctl"), "watch", "--bus", bus.address],
                                           captureStdout: true, captureStderr: true)
            let lines = OutputLines(of: process)
            try await lines.wait("the owner line") { $0.contains(" owner :1.") }
            return (process, lines)
        }
    }

    @Test func everyCommandAgainstTheDaemon() async throws {
        try await Setup.with({ _ in
            """
            [worker.sleeper]
            exec = ["/bin/sleep", "1000"]
            run-on = "any"

            [worker.off]
            exec = ["/bin/sleep", "1000"]
            enabled = false
            """
        }) { setup in
            let watch = try await setup.watch()
            defer { Task { await watch.process.terminate() } }

            var r = try await setup.ctl(["status"])
            #expect(r.status == 0, "\(r.stderr)")
            let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            #expect(lines[0].hasPrefix("    Version: ") && lines[0].count > "    Version: ".count)
            try #require(lines.count == 9, "\(r.stdout)")
            #expect(Array(lines[1...5]) == ["     Runner: process", "    HA role: standalone", "  Log level: info", "Maintenance: no", ""])
            #expect(lines[6].range(of: #"^NAME +STATE +PID +ENABLED +RESTARTS +LAST-EXIT +RUN-ON +SINCE$"#, options: .regularExpression) != nil)
            #expect(lines[7].range(of: #"^off +disabled +- +no +0 +- +primary +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"#, options: .regularExpression) != nil,
                    "\(lines[7])")
            #expect(lines[8].range(of: #"^sleeper +running +\d+ +yes +0 +- +any +\d{4}-"#, options: .regularExpression) != nil, "\(lines[8])")

            let sleeper = try await setup.worker("sleeper")
            let firstPid = try #require(sleeper["pid"] as? Int)
            #expect(firstPid > 0)
            #expect(sleeper["state"] as? String == "running")
            #expect(sleeper["path"] as? String == BgWorkerBus.workerPathPrefix + "sleeper")

            r = try await setup.ctl(["list", "--json"])
            let rows = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
            #expect(rows.compactMap { $0["name"] as? String }.sorted() == ["off", "sleeper"])

            // Unknown workers: 4.
            for command in [["status", "nope"], ["enable", "nope"], ["disable", "nope"], ["restart", "nope"]] {
                r = try await setup.ctl(command)
                #expect(r.status == 4, "\(command)")
                #expect(r.stderr.hasPrefix("bgworkerctl: ") && r.stderr.hasSuffix("(\(BgWorkerBus.ErrorName.noSuchWorker))"), "\(r.stderr)")
            }

            // Enable replies once it runs; the watch saw the transition.
            r = try await setup.ctl(["enable", "off"])
            #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty, "\(r)")
            let enabled = try await setup.worker("off")
            #expect(enabled["state"] as? String == "running")
            #expect(enabled["enabled"] as? Bool == true)
            try await watch.lines.wait("off running") { $0.contains(" worker off: running, pid ") }

            r = try await setup.ctl(["--json", "disable", "off"])
            #expect(r.status == 0)
            #expect(r.stdout.contains(#""state":"disabled""#), "\(r.stdout)")
            try await watch.lines.wait("off stopping") { $0.contains(" worker off: stopping, pid ") }
            try await watch.lines.wait("off disabled") { $0.contains(" worker off: disabled") }
            r = try await setup.ctl(["restart", "off"])
            #expect(r.status == 1)
            #expect(r.stderr.hasSuffix("(\(BgWorkerBus.ErrorName.disabled))"), "\(r.stderr)")

            r = try await setup.ctl(["restart", "sleeper"])
            #expect(r.status == 0, "\(r.stderr)")
            let restarted = try await setup.worker("sleeper")
            #expect(restarted["state"] as? String == "running")
            #expect(restarted["pid"] as? Int != firstPid)

            // Log level and HA role.
            #expect(try await setup.ctl(["log-level"]).stdout == "info")
            #expect(try await setup.ctl(["log-level", "debug"]).status == 0)
            #expect(try await setup.ctl(["log-level", "--json"]).stdout == #"{"logLevel":"debug"}"#)
            try await watch.lines.wait("the level change") { $0.hasSuffix(" properties manager: LogLevel=debug") }
            r = try await setup.ctl(["log-level", "loud"])
            #expect(r.status == 1)
            #expect(r.stderr.hasSuffix("(org.freedesktop.DBus.Error.InvalidArgs)"), "\(r.stderr)")
            #expect(try await setup.ctl(["ha"]).stdout == "standalone")

            // Reload: fine, then an invalid file changes nothing and says why.
            r = try await setup.ctl(["reload"])
            #expect(r.status == 0 && r.stdout.isEmpty, "\(r)")
            try "[worker.sleeper]\nexex = 1\n".write(toFile: setup.daemon.configPath, atomically: true, encoding: .utf8)
            r = try await setup.ctl(["reload"])
            #expect(r.status == 1)
            #expect(r.stderr.hasSuffix("(\(BgWorkerBus.ErrorName.invalidConfig))") && r.stderr.contains("exex"), "\(r.stderr)")
            #expect(try await setup.worker("sleeper")["state"] as? String == "running")
        }
    }

    /// The emergency stop and per-worker log levels through bgworkerctl: several names at once,
    /// `stopped` in status, the worker's own and effective level, JSON.
    @Test func stopStartAndWorkerLogLevels() async throws {
        // Three sleepers: a, b with its own level, off disabled.
        let workers = [("a", ""), ("b", #"log-level = "debug""#), ("off", "enabled = false")]
        try await Setup.with({ _ in
            workers.map { "[worker.\($0.0)]\nexec = [\"/bin/sleep\", \"1000\"]\n\($0.1)\n" }.joined(separator: "\n")
        }) { setup in
            var r = try await setup.ctl(["stop", "a", "b"])
            #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty, "\(r)")
            for name in ["a", "b"] {
                let worker = try await setup.worker(name)
                #expect(worker["state"] as? String == "stopped" && worker["pid"] as? Int == 0 && worker["enabled"] as? Bool == true)
            }
            r = try await setup.ctl(["status"])
            #expect(r.stdout.split(separator: "\n").contains { $0.hasPrefix("a ") && $0.contains(" stopped ") },
                    "\(r.stdout)")

            // JSON: an array of the workers, in the order given.
            r = try await setup.ctl(["start", "b", "a", "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            let started = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
            #expect(started.map { $0["name"] as? String } == ["b", "a"])
            #expect(started.allSatisfy { $0["state"] as? String == "running" })

            // Failures: every name is tried, the first failure sets the status.
            r = try await setup.ctl(["stop", "nope", "a"])
            #expect(r.status == 4, "\(r)")
            #expect(r.stderr.hasSuffix("(\(BgWorkerBus.ErrorName.noSuchWorker))"), "\(r.stderr)")
            #expect(try await setup.worker("a")["state"] as? String == "stopped", "a was stopped all the same")
            r = try await setup.ctl(["start", "a", "off"])
            #expect(r.status == 1)
            #expect(r.stderr == "bgworkerctl: worker 'off' is disabled (\(BgWorkerBus.ErrorName.disabled))", "\(r.stderr)")
            #expect(try await setup.worker("a")["state"] as? String == "running")
            r = try await setup.ctl(["stop", "off"])
            #expect(r.status == 0, "a disabled worker: nothing to do")
            #expect(try await setup.worker("off")["state"] as? String == "disabled")

            // Log levels: the configured one, set, clear ('' and --clear), JSON, status NAME.
            #expect(try await setup.ctl(["log-level", "--worker", "b"]).stdout == "      Own: debug\nEffective: debug")
            #expect(try await setup.ctl(["log-level", "--worker", "a"]).stdout == "      Own: - (follows the daemon's)\nEffective: info")
            #expect(try await setup.ctl(["log-level", "--worker", "a", "trace"]).status == 0)
            #expect(try await setup.ctl(["log-level", "warning"]).status == 0)
            r = try await setup.ctl(["log-level", "--worker", "a", "--json"])
            #expect(r.stdout == #"{"name":"a","logLevel":"trace","effectiveLogLevel":"trace"}"#, "\(r)")
            r = try await setup.ctl(["status", "a"])
            #expect(r.stdout.contains("Log level: trace (its own)"), "\(r.stdout)")
            #expect(try await setup.ctl(["log-level", "--worker", "a", ""]).status == 0)
            r = try await setup.ctl(["--json", "log-level", "--worker", "b", "--clear"])
            #expect(r.stdout == #"{"name":"b","logLevel":"","effectiveLogLevel":"warning"}"#, "\(r)")
            r = try await setup.ctl(["status", "a"])
            #expect(r.stdout.contains("Log level: warning (the daemon's)"), "\(r.stdout)")
            let a = try await setup.worker("a")
            #expect(a["logLevel"] as? String == "" && a["effectiveLogLevel"] as? String == "warning")

            r = try await setup.ctl(["log-level", "--worker", "a", "loud"])
            #expect(r.status == 1)
            #expect(r.stderr.hasSuffix("(org.freedesktop.DBus.Error.InvalidArgs)"), "\(r.stderr)")
            r = try await setup.ctl(["log-level", "--worker", "nope", "debug"])
            #expect(r.status == 4, "\(r)")
            r = try await setup.ctl(["log-level", "--clear"])
            #expect(r.status == 1 && r.stderr.contains("--clear needs --worker"), "\(r.stderr)")
        }
    }

    @Test(arguments: ClientsExampleTests.Program.allCases)
    func theExampleWorkerUnderTheDaemonFollowsItsLogLevelAndStopsCleanly(_ program: ClientsExampleTests.Program) async throws {
        let example = builtExecutablePath("bgworker-example")
        let argv = switch program {
        case .swift: [example, "--interval", "0.05", "--die-one-in", "1000000"]
        case .python: ["/usr/bin/python3", "\(packageRoot)/\(program.rawValue)", "0.05"]
        }
        var pipe: NamedPipe?
        try await Setup.with({ directory in
            pipe = try? NamedPipe(in: directory, name: "dice.out")
            let run = pipe!.asStandardOutput(of: argv)
            return """
                [worker.dice]
                exec = [\(run.map(tomlString).joined(separator: ", "))]

                [worker.bad]
                exec = ["\(example)", "--die-one-in", "1"]
                restart-delay = 600
                restart-delay-max = 600
                """
        }) { setup in
            let output = try #require(pipe).reader()
            defer { Task { await output.process.terminate() } }
            let watch = try await setup.watch()
            defer { Task { await watch.process.terminate() } }

            // The environment the daemon gives: BGWORKER_NAME, BGWORKER_LOG_LEVEL, and the bus.
            try await output.lines.wait("following the daemon") { $0.hasPrefix("<6>following \(BgWorkerBus.busName) at :1.") }
            #expect(output.lines.all.first == "<6>dice starting: every 0.05s, log level info")
            #expect(output.lines.all.allSatisfy { !$0.hasPrefix("<7>") })

            #expect(try await setup.ctl(["log-level", "debug"]).status == 0)
            let changed = try await output.lines.wait("the new level") { $0.hasPrefix("<5>log level debug (from :1.") }
            try await output.lines.wait("a debug line", after: changed) { $0.hasPrefix("<7>cycle ") }

            // Its own level wins over the daemon's, which it follows again once that is cleared.
            #expect(try await setup.ctl(["log-level", "--worker", "dice", "warning"]).status == 0)
            let own = try await output.lines.wait("its own level", after: changed) { $0.hasPrefix("<5>log level warning (from :1.") }
            #expect(try await setup.ctl(["log-level", "error"]).status == 0)
            #expect(try await setup.ctl(["log-level", "--worker", "dice", "--clear"]).status == 0)
            let cleared = try await output.lines.wait("the daemon's level again", after: own + 1) { $0.hasPrefix("<5>log level ") }
            #expect(output.lines.all[cleared].hasPrefix("<5>log level error (from :1."), "the daemon's change never reached it: \(output.lines.all[cleared])")
            #expect(try await setup.ctl(["log-level", "info"]).status == 0)
            try await output.lines.wait("info again", after: cleared + 1) { $0.hasPrefix("<5>log level info (from :1.") }

            // The bad one exits 1 at its first cycle and waits in backoff.
            let bad = try await setup.worker("bad")
            if bad["state"] as? String != "backoff" {
                try await watch.lines.wait("bad in backoff") { $0.contains(" worker bad: backoff (exited with status 1)") }
            }
            #expect(try await setup.worker("bad")["lastExit"] as? String == "exited 1")

            // Disable sends SIGTERM: the example says so and exits 0.
            let r = try await setup.ctl(["disable", "dice"])
            #expect(r.status == 0, "\(r.stderr)")
            try await output.lines.wait("the last line") { $0 == "<6>stopped" }
            #expect(ClientsExampleTests.quietStop(output.lines.all), "\(output.lines.all.suffix(5))")
            #expect(try await setup.worker("dice")["lastExit"] as? String == "exited 0")
        }
    }

    @Test func theHASimulatorDrivesTheDaemonsRole() async throws {
        try await Setup.with({ _ in
            """
            [ha]
            source = "dbus"

            [worker.p]
            exec = ["/bin/sleep", "1000"]
            run-on = "primary"

            [worker.s]
            exec = ["/bin/sleep", "1000"]
            run-on = "secondary"
            """
        }) { setup in
            let watch = try await setup.watch()
            defer { Task { await watch.process.terminate() } }
            #expect(try await setup.ctl(["ha"]).stdout == "unknown")

            let sim = try await ClientsHASimTests.Simulator.start(on: setup.bus, ["--role", "primary"], directory: setup.directory)
            defer { Task { await sim.process.terminate() } }
            try await watch.lines.wait("primary") { $0.hasSuffix(" ha-role primary") }
            try await watch.lines.wait("p running") { $0.contains(" worker p: running, pid ") }
            #expect(try await setup.ctl(["ha", "--json"]).stdout == #"{"haRole":"primary"}"#)

            try await sim.send("secondary", expecting: "secondary")
            try await watch.lines.wait("secondary") { $0.hasSuffix(" ha-role secondary") }
            try await watch.lines.wait("s running") { $0.contains(" worker s: running, pid ") }
            try await watch.lines.wait("p in standby") { $0.contains(" worker p: standby") }
            #expect(try await setup.worker("p")["state"] as? String == "standby")

            sim.input.send("quit")
            try await watch.lines.wait("unknown") { $0.hasSuffix(" ha-role unknown") }
            #expect(try await setup.ctl(["ha"]).stdout == "unknown")
        }
    }
}

/// A TOML basic string.
func tomlString(_ s: String) -> String {
    "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
}
