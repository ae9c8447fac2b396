import Foundation
import Glibc
import Testing
import TestSupport

/// The worker side of the notify protocol without the daemon: `bgworker-example --notify` and
/// the senders docs/workers.md documents (C with libsystemd, systemd-notify, the Python
/// function), each sending to a datagram socket the test owns, as bgworkerd's would be.
@Suite("notify workers")
struct ClientsNotifyTests {
    typealias Message = [(key: String, value: String)]

    /// Our environment without the notify variables of whatever runs the tests, plus `extra`.
    static func environment(_ extra: [String: String]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] { environment[key] = nil }
        return environment.merging(extra) { $1 }
    }

    /// bgworker-example on `bus`, sending to `socket`, one cycle per `interval`.
    static func example(bus: String, socket: NotifySocket?, interval: String = "0.05", _ arguments: [String],
                        environment extra: [String: String] = [:]) throws -> (process: ChildProcess, output: OutputLines) {
        var extra = extra
        extra["BGWORKER_NAME"] = "dice"
        if let socket { extra["NOTIFY_SOCKET"] = socket.address }
        let process = try ChildProcess([builtExecutablePath("bgworker-example"), "--bus", bus, "--interval", interval] + arguments,
                                       environment: environment(extra), captureStdout: true)
        return (process, OutputLines(of: process))
    }

    /// Receives messages until `done` holds for all of them; returns them.
    static func receive(_ socket: NotifySocket, timeout: Duration = .seconds(15),
                        until done: ([Message]) -> Bool) async throws -> [Message] {
        var messages: [Message] = []
        let deadline = ContinuousClock.now + timeout
        while !done(messages) {
            messages.append(try await socket.receive(timeout: deadline - ContinuousClock.now))
        }
        return messages
    }

    static func values(_ key: String, in messages: [Message]) -> [String] {
        messages.flatMap { $0.filter { $0.key == key }.map(\.value) }
    }

    /// The cycle numbers of the STATUS= values, in order.
    static func cycles(in messages: [Message]) -> [Int] {
        values("STATUS", in: messages).compactMap { status in
            guard status.hasPrefix("cycle ") else { return nil }
            return Int(status.dropFirst(6).prefix { $0.isNumber })
        }
    }

    @Test func readyStatusAndWatchdogPingsUntilTheMainLoopHangs() async throws {
        try await withBus { bus in
            let socket = try NotifySocket()
            let clock = ContinuousClock()
            let started = clock.now
            // Pings every 50 ms, a cycle every 100 ms, the main loop hangs after the fourth.
            let example = try Self.example(bus: bus.address, socket: socket, interval: "0.1", ["--notify", "--hang-after", "4"],
                                           environment: ["WATCHDOG_USEC": "100000"])
            defer { Task { await example.process.terminate() } }

            let messages = try await Self.receive(socket) { messages in
                Self.values("READY", in: messages).contains("1") && Self.values("STATUS", in: messages).contains("cycle 4")
            }
            let elapsed = clock.now - started
            #expect(Self.values("READY", in: messages) == ["1"])
            #expect(Self.cycles(in: messages).first == 1)
            // In order; a cycle's status may come twice (before and with READY=1).
            #expect(Self.cycles(in: messages) == Self.cycles(in: messages).sorted())
            #expect(Set(Self.cycles(in: messages)) == [1, 2, 3, 4], "\(Self.values("STATUS", in: messages))")
            // The bus works: the status that comes with READY=1 and every later one is the plain
            // cycle (or, had the bus been quicker than the first cycle, that there is none yet).
            let ready = try #require(messages.firstIndex { $0.contains { $0 == ("READY", "1") } })
            #expect(messages[ready].first?.key == "READY")
            #expect(Self.values("STATUS", in: Array(messages[ready...])).allSatisfy {
                $0.range(of: #"^(cycle \d+|ready, no cycle yet)$"#, options: .regularExpression) != nil
            }, "\(Self.values("STATUS", in: messages))")
            // Three cycles took at least 300 ms: a ping every 50 ms from the first, not many more.
            let pings = Self.values("WATCHDOG", in: messages)
            #expect(pings.allSatisfy { $0 == "1" })
            #expect(pings.count >= 4, "\(pings.count) pings")
            #expect(pings.count <= Int(elapsed / .milliseconds(50)) + 2, "\(pings.count) pings in \(elapsed)")
            #expect(Set(messages.flatMap { $0.map(\.key) }).isSubset(of: ["READY", "STATUS", "WATCHDOG"]))

            // Hung after cycle 4: not one more message in 12 ping periods, and the process stays.
            try await example.output.wait("the hang") { $0 == "<4>cycle 4: hanging (--hang-after 4): no more cycles, no more watchdog pings" }
            await #expect(throws: TestProcessError.self) { try await socket.receive(timeout: .milliseconds(600)) }
            #expect(!example.process.hasExited)
            #expect(!example.output.all.contains { $0.hasPrefix("<6>cycle 5") })

            // SIGTERM still ends it, with STOPPING=1.
            example.process.signal(SIGTERM)
            try await socket.waitFor("STOPPING", value: "1")
            #expect(WaitStatus.exitCode(try await example.process.waitForExit()) == 0)
            #expect(example.output.all.contains("<6>ready: the bus connection works (READY=1 sent)"))
        }
    }

    @Test func aWatchdogForAnotherPidOrNoneIsNotPinged() async throws {
        try await withBus { bus in
            for extra in [["WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"], [:]] {
                let socket = try NotifySocket()
                let example = try Self.example(bus: bus.address, socket: socket, ["--notify"], environment: extra)
                defer { Task { await example.process.terminate() } }
                let messages = try await Self.receive(socket) { messages in
                    Self.values("READY", in: messages).contains("1") && Self.cycles(in: messages).contains(4)
                }
                #expect(Self.values("WATCHDOG", in: messages).isEmpty, "\(extra)")
            }
        }
    }

    @Test func withoutNotifyOnlyTheWatchdogIsPinged() async throws {
        try await withBus { bus in
            let socket = try NotifySocket()
            let example = try Self.example(bus: bus.address, socket: socket, [], environment: ["WATCHDOG_USEC": "100000"])
            defer { Task { await example.process.terminate() } }
            // Until it follows the bus (where --notify would say READY=1) and three cycles later.
            let following = try await example.output.wait("following") { $0.hasPrefix("<6>connected to the bus as ") }
            let a = try await example.output.wait("a cycle", after: following) { $0.hasPrefix("<6>cycle ") }
            try await example.output.wait("another cycle", after: a + 1) { $0.hasPrefix("<6>cycle ") }
            let messages = try await Self.receive(socket) { $0.count == 3 }
            #expect(messages.allSatisfy { $0.count == 1 && $0[0] == ("WATCHDOG", "1") }, "\(messages)")
            example.process.signal(SIGTERM)
            #expect(WaitStatus.exitCode(try await example.process.waitForExit()) == 0)
        }
    }

    @Test func aBusThatNeverWorksLeavesItNotReadyAndTheStatusSaysWhy() async throws {
        let socket = try NotifySocket()
        let example = try Self.example(bus: "/nonexistent/bus.sock", socket: socket, ["--notify"])
        defer { Task { await example.process.terminate() } }
        let messages = try await Self.receive(socket) { Self.cycles(in: $0).contains(5) }
        try await example.output.wait("the warning") { $0.hasPrefix("<4>cannot connect to the bus: ") }
        #expect(Self.values("READY", in: messages).isEmpty)
        let statuses = Self.values("STATUS", in: messages)
        #expect(statuses.last?.hasPrefix("cycle 5; not ready: cannot connect to the bus: ") == true, "\(statuses)")
        #expect(statuses.last?.contains("/nonexistent/bus.sock") == true)
        // The cause is said once in the log too, and the work goes on.
        #expect(example.output.all.filter { $0.hasPrefix("<4>") }.count == 1)
    }

    @Test func aLostBusShowsInTheStatusAndANewConnectionClearsIt() async throws {
        try await withBus { bus in
            let socket = try NotifySocket()
            let example = try Self.example(bus: bus.socketPath, socket: socket, ["--notify"])
            defer { Task { await example.process.terminate() } }
            try await socket.waitFor("READY", value: "1")
            await bus.kill()
            let lost = try await Self.receive(socket) { messages in
                Self.values("STATUS", in: messages).contains { $0.hasSuffix("; bus lost: reconnecting") }
            }
            #expect(Self.values("READY", in: lost).isEmpty)
            let again = try await PrivateBus(socketPath: bus.socketPath, directory: bus.directory)
            try await withCleanup(again, cleanup: { await $0.kill() }) { _ in
                let back = try await Self.receive(socket) { messages in
                    Self.values("STATUS", in: messages).last?.range(of: #"^cycle \d+$"#, options: .regularExpression) != nil
                }
                #expect(Self.values("READY", in: back).isEmpty, "READY=1 is said once per process")
            }
        }
    }

    @Test func withoutNotifySocketNotifyDoesNothing() async throws {
        try await withBus { bus in
            let example = try Self.example(bus: bus.address, socket: nil, ["--notify", "--hang-after", "2"],
                                           environment: ["WATCHDOG_USEC": "100000", "BGWORKER_LOG_LEVEL": "debug"])
            defer { Task { await example.process.terminate() } }
            try await example.output.wait("the hang") { $0.hasPrefix("<4>cycle 2: hanging") }
            #expect(example.output.all.contains("<7>--notify without NOTIFY_SOCKET: nothing to notify"))
            #expect(example.output.all.filter { $0.hasPrefix("<4>") }.count == 1, "no complaint but the hang")
            example.process.signal(SIGTERM)
            #expect(WaitStatus.exitCode(try await example.process.waitForExit()) == 0)
        }
    }

    /// The whole story under the real daemon: `starting` until READY=1, the status and "ready
    /// since" in `bgworkerctl status`, then the watchdog catching the hung main loop.
    @Test
    func theExampleUnderTheDaemonIsReadyThenCaughtByTheWatchdog() async throws {
        try await ClientsEndToEndTests.Setup.with({ _ in
            """
            [worker.importer]
            exec = ["\(builtExecutablePath("bgworker-example"))", "--notify", "--interval", "0.1", "--hang-after", "50"]
            run-on = "any"
            ready = "notify"
            start-timeout = 10.0
            watchdog = 0.5
            restart-delay = 60.0
            """
        }) { setup in
            let watch = try await setup.watch()
            defer { Task { await watch.process.terminate() } }
            // Subscribed first, then read: READY=1 may have come before the watch started.
            if try await setup.worker("importer")["state"] as? String != "running" {
                try await watch.lines.wait("running") { $0.contains(" worker importer: running, pid ") }
            }
            let status = try await setup.ctl(["status", "importer"])
            #expect(status.stdout.contains("Ready: since "), "\(status.stdout)")
            #expect(status.stdout.contains(#"Status: "cycle "#), "\(status.stdout)")
            let running = try await setup.worker("importer")
            #expect((running["readyAt"] as? Int ?? 0) > 0)
            // Fifty cycles (5 s: room for the reads above on a loaded machine), then no ping for the
            // 0.5 s watchdog: SIGABRT, LastExit watchdog.
            try await watch.lines.wait("the watchdog", timeout: .seconds(20)) { $0.contains(" worker importer: backoff") }
            let caught = try await setup.worker("importer")
            #expect(caught["lastExit"] as? String == "watchdog", "\(caught)")
            #expect(caught["readyAt"] as? Int == 0)
        }
    }

    // MARK: - The senders docs/workers.md shows

    /// The fenced code block of docs/workers.md in `language` that contains `marker`.
    static func documentedBlock(_ language: String, containing marker: String) throws -> String {
        let text = try String(contentsOfFile: "\(packageRoot)/docs/workers.md", encoding: .utf8)
        let blocks = text.components(separatedBy: "```\(language)\n").dropFirst().map { $0.components(separatedBy: "\n```")[0] }
        return try #require(blocks.first { $0.contains(marker) }, "no ```\(language) block with \(marker) in docs/workers.md")
    }

    /// An abstract socket and one on a path, as `NOTIFY_SOCKET` may name either.
    static func sockets(_ directory: TemporaryDirectory) throws -> [NotifySocket] {
        [try NotifySocket(), try NotifySocket(path: directory.file("notify"))]
    }

    @Test func thePythonSenderOfTheDocs() async throws {
        let function = try Self.documentedBlock("python", containing: "def sd_notify(")
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        for socket in try Self.sockets(directory) {
            let program = function + "\nimport sys\nassert sd_notify(sys.argv[1])\n"
            let result = try await run(["/usr/bin/python3", "-c", program, "READY=1\nSTATUS=from python \u{e9}"],
                                       environment: ["NOTIFY_SOCKET": socket.address])
            #expect(result.status == 0, "\(result.stderr)")
            let message = try await socket.receive()
            #expect(message.map(\.key) == ["READY", "STATUS"], "\(socket.address)")
            #expect(message.map(\.value) == ["1", "from python \u{e9}"])
        }
        let without = try await run(["env", "-u", "NOTIFY_SOCKET", "/usr/bin/python3", "-c",
                                     function + "\nassert sd_notify('READY=1') is False\n"])
        #expect(without.status == 0, "\(without.stderr)")
    }

    @Test func theShellLineOfTheDocs() async throws {
        let script = try Self.documentedBlock("sh", containing: "systemd-notify --ready")
        let line = try #require(script.split(separator: "\n").first { $0.hasPrefix("systemd-notify --ready") })
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        for socket in try Self.sockets(directory) {
            // systemd-notify waits for its BARRIER=1 to be received: the receiving runs beside it.
            async let sent = run(["/bin/sh", "-c", String(line)], environment: ["NOTIFY_SOCKET": socket.address])
            let message = try await socket.waitFor("READY", value: "1")
            #expect(message.first { $0.key == "STATUS" }?.value == "connected to the database")
            try await socket.waitFor("BARRIER", value: "1")
            let result = try await sent
            #expect(result.status == 0, "\(result.stderr)")
        }
    }

    @Test func theCProgramOfTheDocs() async throws {
        let source = try Self.documentedBlock("c", containing: "sd_notify(0, \"READY=1")
        let compiler = try await run(["/bin/sh", "-c", "command -v cc || command -v clang || command -v /opt/swift/usr/bin/clang"])
        try #require(compiler.status == 0, "no C compiler (cc, clang) on PATH")
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try source.write(toFile: directory.file("notify-worker.c"), atomically: true, encoding: .utf8)
        let built = try await run([compiler.stdout, directory.file("notify-worker.c"), "-o", directory.file("notify-worker"), "-lsystemd"],
                                  timeout: .seconds(120))
        try #require(built.status == 0, "\(built.stderr)")

        let socket = try NotifySocket()
        let worker = try ChildProcess([directory.file("notify-worker")],
                                      environment: Self.environment(["NOTIFY_SOCKET": socket.address, "WATCHDOG_USEC": "1000000"]))
        defer { Task { await worker.terminate() } }
        let messages = try await Self.receive(socket) { Self.values("STATUS", in: $0).contains("cycle 3") }
        #expect(messages.first.map { $0.map(\.key) } == ["READY", "STATUS"])
        #expect(Self.values("STATUS", in: messages) == ["ready", "cycle 1", "cycle 2", "cycle 3"])
        #expect(Self.values("WATCHDOG", in: messages).count >= 2)
        worker.signal(SIGTERM)
        try await socket.waitFor("STOPPING", value: "1")
        #expect(WaitStatus.exitCode(try await worker.waitForExit()) == 0)
    }
}
