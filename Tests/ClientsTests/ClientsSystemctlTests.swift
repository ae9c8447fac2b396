import Foundation
import Glibc
import Testing
import TestSupport

/// Issue 12, item 4: bgworkerctl's commands as an admin used to systemctl expects them, with the
/// real bgworkerd and bgworkerctl on a private bus.
@Suite("bgworkerctl like systemctl", .timeLimit(.minutes(3)))
struct ClientsSystemctlTests {
    typealias Setup = ClientsEndToEndTests.Setup

    static let fleet = """
        [worker.sync-a]
        exec = ["/bin/sleep", "1000"]

        [worker.sync-b]
        # the second one
        exec = ["/bin/sleep", "1000"]
        environment = { A = "1" }

        [worker.off]
        exec = ["/bin/sleep", "1000"]
        enabled = false
        """

    /// The states of every worker, by name (`list --json`).
    static func states(_ setup: Setup) async throws -> [String: String] {
        let r = try await setup.ctl(["list", "--json"])
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]], "\(r)")
        return Dictionary(uniqueKeysWithValues: rows.map { ($0["name"] as? String ?? "", $0["state"] as? String ?? "") })
    }

    @Test func severalNamesPatternsAndAll() async throws {
        try await Setup.with({ _ in Self.fleet }) { setup in
            // Several names in one command; the calls go out together.
            var r = try await setup.ctl(["disable", "sync-a", "sync-b"])
            #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty, "\(r)")
            #expect(try await Self.states(setup) == ["sync-a": "disabled", "sync-b": "disabled", "off": "disabled"])
            // A glob pattern, quoted as for systemctl; --json answers an array in the order given.
            r = try await setup.ctl(["enable", "sync-*", "--json"])
            #expect(r.status == 0, "\(r)")
            let enabled = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
            #expect(enabled.map { $0["name"] as? String } == ["sync-a", "sync-b"])
            #expect(enabled.allSatisfy { $0["state"] as? String == "running" })
            // A pattern that matches nothing is said, the rest is done, and the status is 4.
            r = try await setup.ctl(["stop", "nomatch-*", "sync-a"])
            #expect(r.status == 4, "\(r)")
            #expect(r.stderr == "bgworkerctl: no worker matches 'nomatch-*'", "\(r.stderr)")
            #expect(try await Self.states(setup)["sync-a"] == "stopped")
            // --all: stop every worker, start every enabled one (a disabled one is not an error).
            r = try await setup.ctl(["stop", "--all"])
            #expect(r.status == 0, "\(r)")
            #expect(try await Self.states(setup) == ["sync-a": "stopped", "sync-b": "stopped", "off": "disabled"])
            r = try await setup.ctl(["start", "--all"])
            #expect(r.status == 0, "\(r)")
            #expect(try await Self.states(setup) == ["sync-a": "running", "sync-b": "running", "off": "disabled"])
            r = try await setup.ctl(["restart", "--all", "--json"])
            #expect(r.status == 0, "\(r)")
            #expect(r.stdout.contains(#""name":"sync-a""#) && !r.stdout.contains(#""name":"off""#), "\(r.stdout)")
            // Usage errors: names and --all, neither, and --all where it would change what is persisted.
            for argv in [["restart", "--all", "sync-a"], ["restart"], ["enable"], ["disable", "--all"]] {
                r = try await setup.ctl(argv)
                #expect(r.status == 1, "\(argv): \(r)")
                #expect(r.stderr.hasPrefix("Error: "), "\(argv): \(r.stderr)")
            }
            #expect(try await Self.states(setup)["off"] == "disabled")
        }
    }

    /// `status` takes several names and patterns, as systemctl status: each worker's block, a
    /// blank line between them; an unknown one is said and exits 4, the others still print.
    @Test func statusTakesSeveralNamesAndPatterns() async throws {
        try await Setup.with({ _ in Self.fleet }) { setup in
            var r = try await setup.ctl(["status", "sync-*", "off"])
            #expect(r.status == 0, "\(r)")
            let names = r.stdout.split(separator: "\n").filter { $0.hasPrefix("     Name: ") }.map { $0.dropFirst(11) }
            #expect(names == ["sync-a", "sync-b", "off"], "\(r.stdout)")
            r = try await setup.ctl(["status", "sync-a", "nope", "--json"])
            #expect(r.status == 4 && r.stderr.contains("no worker named 'nope'"), "\(r)")
            let array = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]], "\(r)")
            #expect(array.map { $0["name"] as? String } == ["sync-a"])
            // One name as before: the worker's object.
            r = try await setup.ctl(["status", "off", "--json"])
            #expect((try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["name"] as? String == "off", "\(r)")
        }
    }

    @Test func isActiveAndIsFailedExitAsSystemctls() async throws {
        try await Setup.with({ _ in
            Self.fleet + """


                [worker.broken]
                exec = ["/bin/false"]
                restart-delay = 0
                start-limit-burst = 1
                """
        }) { setup in
            // broken fails after its first exit; wait for it with a deadline.
            let deadline = ContinuousClock.now + .seconds(15)
            while try await setup.ctl(["is-failed", "-q", "broken"]).status != 0 {
                guard ContinuousClock.now < deadline else { throw TestProcessError("broken never failed: \(try await Self.states(setup))") }
            }
            var r = try await setup.ctl(["is-active", "sync-a", "off", "nope"])
            #expect(r.status == 0 && r.stdout == "running\ndisabled\nunknown", "\(r)")
            r = try await setup.ctl(["is-active", "off", "broken"])
            #expect(r.status == 3 && r.stdout == "disabled\nfailed" && r.stderr.isEmpty, "\(r)")
            r = try await setup.ctl(["is-active", "nope"])
            #expect(r.status == 4 && r.stdout == "unknown", "\(r)")
            r = try await setup.ctl(["is-active", "--quiet", "sync-*"])
            #expect(r.status == 0 && r.stdout.isEmpty, "\(r)")
            r = try await setup.ctl(["is-failed", "sync-*"])
            #expect(r.status == 1 && r.stdout == "running\nrunning", "\(r)")
            r = try await setup.ctl(["is-failed", "sync-a", "broken"])
            #expect(r.status == 0 && r.stdout == "running\nfailed", "\(r)")
            r = try await setup.ctl(["is-failed", "nope"])
            #expect(r.status == 4, "\(r)")
            r = try await setup.ctl(["is-active", "--json", "sync-a", "nope"])
            #expect(r.stdout == #"[{"name":"sync-a","state":"running"},{"name":"nope","state":null}]"#, "\(r)")
        }
    }

    @Test func showPrintsEveryPropertyOrThoseAskedFor() async throws {
        try await Setup.with({ _ in Self.fleet }) { setup in
            var r = try await setup.ctl(["show", "sync-b"])
            #expect(r.status == 0, "\(r)")
            let lines = r.stdout.split(separator: "\n").map(String.init)
            let keys = lines.map { String($0.prefix { $0 != "=" }) }
            #expect(keys == keys.sorted(), "\(lines)")
            for expected in ["Name=sync-b", "State=running", "Enabled=yes", "RunOn=primary", "Restarts=0", "LastExit=",
                             "LogLevel=", "EffectiveLogLevel=info", "StateReason=started"] {
                #expect(lines.contains(expected), "\(expected) in \(lines)")
            }
            #expect(lines.contains { $0.range(of: #"^Pid=[1-9][0-9]*$"#, options: .regularExpression) != nil })
            #expect(lines.contains { $0.range(of: #"^StateChangedAt=[1-9][0-9]{15}$"#, options: .regularExpression) != nil })
            r = try await setup.ctl(["show", "-p", "State,Name", "--property", "Enabled", "sync-*", "off"])
            #expect(r.stdout == "Enabled=yes\nName=sync-a\nState=running\n\nEnabled=yes\nName=sync-b\nState=running\n\nEnabled=no\nName=off\nState=disabled", "\(r)")
            // An unknown property prints nothing (not a blank line per worker).
            r = try await setup.ctl(["show", "-p", "Nope", "sync-*", "off"])
            #expect(r.status == 0 && r.stdout.isEmpty, "\(r)")
            r = try await setup.ctl(["show", "--value", "-p", "State", "off"])
            #expect(r.stdout == "disabled", "\(r)")
            // No name: the daemon's own properties.
            r = try await setup.ctl(["show", "-p", "Runner,HARole"])
            #expect(r.stdout == "HARole=standalone\nRunner=process", "\(r)")
            r = try await setup.ctl(["show", "--json", "-p", "State", "sync-a"])
            #expect(r.stdout == #"[{"State":"running"}]"#, "\(r)")
            r = try await setup.ctl(["show", "nope"])
            #expect(r.status == 4 && r.stderr.hasSuffix("(org.example.BgWorker.Error.NoSuchWorker)"), "\(r)")
        }
    }

    /// A drop-in's worker with a multi-line array and a sub-table, as `cat` must show it whole.
    static let dropped = """
        [worker.dropped]
        exec = [
          "/bin/sleep",
          "1000",
        ]

        [worker.dropped.environment]
        B = "2"
        """

    @Test func catPrintsTheDefinitionWithItsFileAndLine() async throws {
        try await Setup.with({ directory in
            mkdir(directory.file("workers.d"), 0o755)
            try? ("# a drop-in\n" + Self.dropped + "\n\n# about the next one\n[worker.other]\nexec = [\"/bin/sleep\", \"1000\"]\n")
                .write(toFile: directory.file("workers.d/10-more.toml"), atomically: true, encoding: .utf8)
            return Self.fleet
        }) { setup in
            let main = setup.directory.file("bgworkerd.toml")
            var r = try await setup.ctl(["cat", "sync-b", "dropped"])
            #expect(r.status == 0, "\(r)")
            // After each table, the keys it does not set, with the values in force, as comments.
            let parts = r.stdout.components(separatedBy: "\n# not set above, in force:\n")
            #expect(parts.count == 3, "\(r.stdout)")
            let inForce = parts.dropFirst().map { $0.split(separator: "\n", omittingEmptySubsequences: false).prefix { $0.hasPrefix("# ") } }
            #expect(inForce.allSatisfy { $0.contains("# restart-delay = 1.0") && $0.contains("# log-buffer-lines = 200") })
            #expect(inForce.allSatisfy { !$0.contains { $0.hasPrefix("# exec") || $0.hasPrefix("# environment") } }, "\(inForce)")
            r.stdout = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).filter { line in
                !inForce.joined().contains(line) && line != "# not set above, in force:"
            }.joined(separator: "\n")
            // The main file has the [daemon] table (3 lines) first; sync-b's header is line 7.
            #expect(r.stdout == """
                # \(main):7
                [worker.sync-b]
                # the second one
                exec = ["/bin/sleep", "1000"]
                environment = { A = "1" }

                # \(setup.directory.file("workers.d/10-more.toml")):2
                \(Self.dropped)
                """, "\(r.stdout)")
            r = try await setup.ctl(["cat", "--json", "sync-a"])
            let blocks = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]], "\(r)")
            #expect(blocks.first?["file"] as? String == main && blocks.first?["line"] as? Int == 4)
            #expect((blocks.first?["text"] as? String)?.hasPrefix("[worker.sync-a]\nexec = [\"/bin/sleep\", \"1000\"]\n# not set above") == true)
            r = try await setup.ctl(["cat", "nope"])
            #expect(r.status == 4, "\(r)")
            // --config names the file when the daemon's cannot be found.
            r = try await setup.ctl(["cat", "--config", main, "off"])
            #expect(r.stdout.hasPrefix("# \(main):"), "\(r)")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: the caller switches to nobody"))
    func catWorksForAnUnprivilegedReader() async throws {
        try await Setup.with({ _ in Self.fleet }) { setup in
            chmod(setup.directory.path, 0o755)
            chmod(setup.directory.file("bgworkerd.toml"), 0o644)
            let r = try await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", builtExecutablePath("bgworkerctl"),
                                   "--bus", setup.bus.address, "cat", "sync-a"])
            #expect(r.status == 0 && r.stdout.contains("[worker.sync-a]\nexec = [\"/bin/sleep\", \"1000\"]\n"), "\(r)")
        }
    }

    @Test func coloursOnATerminalOnlyAndNoColorHonoured() async throws {
        try await Setup.with({ _ in Self.fleet }) { setup in
            let ctl = builtExecutablePath("bgworkerctl")
            // script(1) gives bgworkerctl a terminal.
            func onTerminal(_ environment: String) async throws -> String {
                // Whatever the test's own environment says about colours.
                let r = try await run(["script", "-qec", "env -u NO_COLOR TERM=xterm \(environment) \(ctl) --bus \(setup.bus.address) list",
                                       "/dev/null"])
                #expect(r.status == 0, "\(r)")
                return r.stdout
            }
            let coloured = try await onTerminal("")
            #expect(coloured.contains("\u{1B}[32mrunning\u{1B}[0m"), "\(coloured.debugDescription)")
            // The columns stay aligned: the codes take no width.
            #expect(coloured.contains("sync-a  \u{1B}[32mrunning\u{1B}[0m   "), "\(coloured.debugDescription)")
            #expect(!(try await onTerminal("NO_COLOR=1")).contains("\u{1B}["))
            #expect(!(try await onTerminal("TERM=dumb")).contains("\u{1B}["))
            let piped = try await setup.ctl(["list"])
            #expect(!piped.stdout.contains("\u{1B}["))
        }
    }

    @Test func logLevelsInAnyCaseAndWarnIsWarning() async throws {
        try await Setup.with({ _ in Self.fleet + "\nlog-level = \"Warn\"\n" }) { setup in
            // The config key (the last worker, off, has it) and the command both accept them.
            #expect(try await setup.worker("off")["logLevel"] as? String == "warning")
            var r = try await setup.ctl(["log-level", "WARN"])
            #expect(r.status == 0, "\(r)")
            #expect(try await setup.ctl(["log-level"]).stdout == "warning")
            r = try await setup.ctl(["log-level", "--worker", "sync-a", "Debug"])
            #expect(r.status == 0, "\(r)")
            #expect(try await setup.worker("sync-a")["logLevel"] as? String == "debug")
            r = try await setup.ctl(["log-level", "loud"])
            #expect(r.status == 1 && r.stderr.hasSuffix("(org.freedesktop.DBus.Error.InvalidArgs)"), "\(r)")
        }
    }

    @Test func watchPrintsTimesNotMicroseconds() async throws {
        try await Setup.with({ _ in Self.fleet }) { setup in
            let watch = try await setup.watch()
            defer { Task { await watch.process.terminate() } }
            #expect(try await setup.ctl(["stop", "sync-a"]).status == 0)
            let index = try await watch.lines.wait("the properties line") { $0.contains("properties worker sync-a: State=stopped") }
            let line = watch.lines.all[index]
            #expect(line.range(of: #"StateChangedAt="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}""#, options: .regularExpression) != nil, "\(line)")
        }
    }

    @Test func everyProgramHasVersionAndUsageErrorsExitOne() async throws {
        for program in ["bgworkerctl", "bgworkerd", "bgworker-example", "bgworker-ha-sim", "bgworker-bench"] {
            let version = try await run([builtExecutablePath(program), "--version"])
            #expect(version.status == 0 && version.stdout == "0.1.0", "\(program): \(version)")
            let usage = try await run([builtExecutablePath(program), "--no-such-option"])
            #expect(usage.status == 1, "\(program): \(usage)")
            #expect(usage.stderr.contains("--no-such-option"), "\(program): \(usage.stderr)")
        }
        // bgworkerctl accepts systemctl's --no-pager everywhere.
        let help = try await run([builtExecutablePath("bgworkerctl"), "list", "--no-pager", "--help"])
        #expect(help.status == 0, "\(help)")
    }
}
