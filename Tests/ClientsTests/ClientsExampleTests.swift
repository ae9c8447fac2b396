import BgWorkerAPI
import DBus
import Foundation
import Glibc
import Testing
import TestSupport

/// The example workers as real processes: bgworker-example and the Python example of
/// docs/workers.md. Their log level followed over a real bus from the owner of
/// org.example.BgWorker (our stand-in here; the real daemon in the end-to-end tests), spoofing
/// ignored, the bus restarted under them, SIGTERM; the Swift one's exit on a bad roll.
@Suite("example workers")
struct ClientsExampleTests {
    /// Which example.
    enum Program: String, CustomStringConvertible, CaseIterable {
        case swift = "bgworker-example"
        case python = "docs/examples/follow-log-level.py"
        var description: String { rawValue }
    }

    /// A running example worker and its output.
    struct Example {
        let process: ChildProcess
        let output: OutputLines

        /// Starts `program` on the bus at `bus` (a socket path or address), one cycle per 0.05 s.
        static func start(_ program: Program = .swift, bus: String, level: String? = "info", _ arguments: [String] = []) throws -> Example {
            var environment = ["BGWORKER_NAME": "dice"]
            if let level { environment["BGWORKER_LOG_LEVEL"] = level }
            let argv: [String]
            switch program {
            case .swift:
                argv = [builtExecutablePath("bgworker-example"), "--bus", bus, "--interval", "0.05"] + arguments
            case .python:
                // As under the daemon: the bus comes as DBUS_SYSTEM_BUS_ADDRESS.
                environment["DBUS_SYSTEM_BUS_ADDRESS"] = bus.hasPrefix("/") ? "unix:path=\(bus)" : bus
                argv = ["/usr/bin/python3", "\(packageRoot)/\(Program.python.rawValue)", "0.05"] + arguments
            }
            let process = try ChildProcess(argv, extraEnvironment: environment, captureStdout: true, captureStderr: false)
            return Example(process: process, output: OutputLines(of: process))
        }

        /// Waits for the line saying that the daemon's level has been read from `owner`.
        @discardableResult func waitUntilFollowing(after: Int = 0) async throws -> Int {
            try await output.wait("following \(BgWorkerBus.busName)", after: after) { $0.contains("following \(BgWorkerBus.busName) at :1.") }
        }

        /// Waits for the announcement of `level`; returns its index.
        @discardableResult
        func waitForLevel(_ level: String, after: Int = 0) async throws -> Int {
            try await output.wait("log level \(level)", after: after) { $0.hasPrefix("<5>log level \(level) (from :1.") }
        }

        /// Waits for two complete cycles after line `after` and returns the lines of the second,
        /// which started wholly after that line.
        func secondCycle(after: Int) async throws -> ArraySlice<String> {
            let first = try await output.wait("a cycle", after: after) { $0.hasPrefix("<6>cycle ") }
            let second = try await output.wait("another cycle", after: first + 1) { $0.hasPrefix("<6>cycle ") }
            return output.all[(first + 1)...second]
        }
    }

    /// The output ends with the SIGTERM line and `stopped`, with at most the rest of a cycle
    /// between them (no reconnection, no complaint about the connection it closed itself).
    static func quietStop(_ lines: [String]) -> Bool {
        guard lines.last == "<6>stopped", let sigterm = lines.lastIndex(of: "<6>SIGTERM received; stopping") else { return false }
        return lines[(sigterm + 1)..<(lines.count - 1)].allSatisfy { $0.hasPrefix("<6>cycle ") || $0.hasPrefix("<7>cycle ") }
    }

    @Test func aBadDiceValueExitsWithStatusOne() async throws {
        let result = try await run([builtExecutablePath("bgworker-example"), "--die-one-in", "1", "--bus", "/nonexistent/bus.sock"])
        #expect(result.status == 1)
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.contains("<3>Bad dice value"))
        #expect(!lines.contains { $0.hasPrefix("<6>cycle ") }, "it dies at its first cycle")
    }

    @Test(arguments: Program.allCases)
    func followsTheDaemonsLogLevel(_ program: Program) async throws {
        try await withBus { bus in
            let daemon = try await StandInDaemon.start(on: bus, workers: [], logLevel: "info")
            let example = try Example.start(program, bus: bus.address, program == .swift ? ["--die-one-in", "1000000"] : [])
            defer { Task { await example.process.terminate() } }
            let following = try await example.waitUntilFollowing()
            #expect(example.output.all[...following].allSatisfy { !$0.hasPrefix("<7>") })

            try daemon.setLogLevel("debug")
            let debug = try await example.waitForLevel("debug")
            #expect(example.output.all[debug].hasSuffix("was info)"))
            let verbose = try await example.secondCycle(after: debug)
            #expect(verbose.contains { $0.hasPrefix("<7>cycle ") && $0.hasSuffix(": working") })
            if program == .swift { #expect(verbose.contains { $0.hasPrefix("<7>cycle ") && $0.contains(": rolled ") }) }

            try daemon.setLogLevel("warning")
            let warning = try await example.waitForLevel("warning")
            // Nothing below warning is printed any more: two level changes later, only the
            // announcements (which show at every level) stand between them.
            try daemon.setLogLevel("info")
            let info = try await example.waitForLevel("info", after: warning)
            #expect(Array(example.output.all[(warning + 1)..<info]).allSatisfy { !$0.hasPrefix("<7>") && !$0.hasPrefix("<6>") },
                    "\(example.output.all[(warning + 1)..<info])")
            let quiet = try await example.secondCycle(after: info)
            #expect(quiet.allSatisfy { !$0.hasPrefix("<7>") }, "\(quiet)")
            daemon.detach()
        }
    }

    @Test(arguments: Program.allCases)
    func aPropertiesChangedFromAConnectionThatDoesNotOwnTheNameIsIgnored(_ program: Program) async throws {
        try await withBus { bus in
            let daemon = try await StandInDaemon.start(on: bus, workers: [], logLevel: "info")
            let example = try Example.start(program, bus: bus.address)
            defer { Task { await example.process.terminate() } }
            try await example.waitUntilFollowing()

            let spoofer = try await DBusConnection.connect(.address(bus.address))
            try spoofer.emitSignal(path: StandInDaemon.managerPath, interface: "org.freedesktop.DBus.Properties",
                                   member: "PropertiesChanged",
                                   arguments: [.string(BgWorkerBus.managerInterface), .variantDictionary(["LogLevel": .string("debug")]),
                                               .stringArray([])])
            // Once this round trip is answered, the bus has passed the spoofed signal on: it
            // reaches the worker before anything the owner sends next.
            _ = try await spoofer.nameOwner(BgWorkerBus.busName)
            var spoofed = 0
            if program == .swift {
                spoofed = try await example.output.wait("the spoofed signal reported") {
                    $0.hasPrefix("<4>ignored a PropertiesChanged from \(spoofer.uniqueName ?? "?"), which does not own \(BgWorkerBus.busName)")
                }
            }
            spoofer.close()

            // The owner's change is followed, and nothing ever switched to debug.
            try daemon.setLogLevel("notice")
            let notice = try await example.waitForLevel("notice", after: spoofed)
            #expect(example.output.all[notice].hasSuffix("was info)"))
            #expect(example.output.all.allSatisfy { !$0.hasPrefix("<7>") && !$0.contains("log level debug") })
            daemon.detach()
        }
    }

    @Test(arguments: Program.allCases)
    func theBusRestartedOnTheSameSocketIsReconnectedAndFollowedAgain(_ program: Program) async throws {
        try await withBus { bus in
            let daemon = try await StandInDaemon.start(on: bus, workers: [], logLevel: "info")
            let example = try Example.start(program, bus: bus.socketPath)
            defer { Task { await example.process.terminate() } }
            try await example.waitUntilFollowing()

            await bus.kill()
            let lost = try await example.output.wait("the connection lost") { $0 == "<4>lost the bus connection; opening a new one" }
            // The daemon's level changed while the bus was down: read anew once back.
            try daemon.setLogLevel("debug")
            let again = try await PrivateBus(socketPath: bus.socketPath, directory: bus.directory)
            try await withCleanup(again, cleanup: { await $0.kill() }) { again in
                try await daemon.attach(to: again.address)
                try await example.waitForLevel("debug", after: lost)
                let reconnected = try await example.waitUntilFollowing(after: lost)
                #expect(example.output.all[lost...].contains { $0.hasPrefix("<6>connected to the bus as :1.") })
                try daemon.setLogLevel("warning")
                try await example.waitForLevel("warning", after: reconnected)
                // The work went on throughout.
                #expect(!example.process.hasExited)
                daemon.detach()
            }
        }
    }

    @Test(arguments: Program.allCases)
    func withoutABusTheWorkGoesOnAndTheFailureIsSaidOnce(_ program: Program) async throws {
        let example = try Example.start(program, bus: "/nonexistent/bus.sock", level: "info")
        defer { Task { await example.process.terminate() } }
        let warned = try await example.output.wait("the warning") { $0.hasPrefix("<4>cannot connect to the bus:") }
        // Three cycles later (a few reconnection attempts too), still one warning.
        let a = try await example.output.wait("a cycle", after: warned) { $0.hasPrefix("<6>cycle ") }
        let b = try await example.output.wait("a cycle", after: a + 1) { $0.hasPrefix("<6>cycle ") }
        try await example.output.wait("a cycle", after: b + 1) { $0.hasPrefix("<6>cycle ") }
        #expect(example.output.all.filter { $0.hasPrefix("<4>") }.count == 1)
    }

    @Test(arguments: Program.allCases)
    func sigtermEndsItPromptlyWithStatusZero(_ program: Program) async throws {
        try await withBus { bus in
            let daemon = try await StandInDaemon.start(on: bus, workers: [], logLevel: "info")
            let example = try Example.start(program, bus: bus.address, level: "debug")
            try await example.waitUntilFollowing()
            #expect(example.output.all.first == "<6>dice starting: every 0.05s, log level debug")
            let clock = ContinuousClock()
            let start = clock.now
            example.process.signal(SIGTERM)
            let status = try await example.process.waitForExit(timeout: .seconds(10))
            #expect(WaitStatus.exitCode(status) == 0)
            // Its periodic work is 50 ms; it must not finish a long cycle or back off first.
            #expect(clock.now - start < .seconds(5))
            try await example.output.wait("the last line") { $0 == "<6>stopped" }
            #expect(example.output.all.last == "<6>stopped")
            #expect(Self.quietStop(example.output.all), "\(example.output.all.suffix(5))")
            daemon.detach()
        }
    }

    @Test func aBadLevelInTheEnvironmentIsSaidAndInfoIsUsed() async throws {
        let example = try Example.start(bus: "/nonexistent/bus.sock", level: "loud")
        defer { Task { await example.process.terminate() } }
        try await example.output.wait("a cycle") { $0.hasPrefix("<6>cycle ") }
        #expect(example.output.all.first == "<4>BGWORKER_LOG_LEVEL=loud is not a log level; using info")
        #expect(example.output.all.contains("<6>dice starting: every 0.05s, log level info"))
    }
}
