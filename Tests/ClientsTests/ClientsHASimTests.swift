import Foundation
import Glibc
import Testing
import TestSupport

/// bgworker-ha-sim as a real process on a real bus, read and watched by clients no one here
/// wrote (busctl, gdbus, busctl monitor, python's xml parser).
@Suite("bgworker-ha-sim")
struct ClientsHASimTests {
    static let path = "/org/example/HAManager"
    static let interface = "org.example.HAManager"

    /// A running simulator with its standard input and output.
    struct Simulator {
        let process: ChildProcess
        let input: NamedPipe
        let output: OutputLines
        let uniqueName: String

        static func start(on bus: PrivateBus, _ arguments: [String], directory: TemporaryDirectory) async throws -> Simulator {
            let input = try NamedPipe(in: directory, name: "stdin-\(uniqueID(4))")
            let process = try ChildProcess(input.asStandardInput(of: [builtExecutablePath("bgworker-ha-sim"), "--bus", bus.address] + arguments),
                                           captureStdout: true, captureStderr: true)
            let output = OutputLines(of: process)
            let index = try await output.wait("ready") { $0.hasPrefix("ready ") }
            let unique = String(output.all[index].dropFirst("ready ".count))
            return Simulator(process: process, input: input, output: output, uniqueName: unique)
        }

        /// Sends a line and waits for the `role` line that answers it.
        func send(_ line: String, expecting role: String) async throws {
            let before = output.all.count
            input.send(line)
            try await output.wait("role \(role)", after: before) { $0 == "role \(role)" }
        }
    }

    /// `Role` in the changed-properties dictionary of a PropertiesChanged.
    static func changedRole(_ changed: BusValue) -> String? {
        guard case .object(let properties) = changed else { return nil }
        return properties["Role"]?.unwrapped.string
    }

    func busctl(_ bus: PrivateBus, _ arguments: [String]) async throws -> String {
        try await runChecked(["busctl", "--address=\(bus.unixAddress)"] + arguments,
                             environment: ["SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""])
    }

    func readRole(_ bus: PrivateBus, name: String = "org.example.HAManager") async throws -> String {
        try await busctl(bus, ["get-property", name, Self.path, Self.interface, "Role"])
    }

    @Test func roleIsReadableAndEachChangeIsAnnouncedWithRoleChangedAndPropertiesChanged() async throws {
        try await withBus { bus in
            let dir = try TemporaryDirectory(prefix: "bgw-sim")
            defer { dir.remove() }
            let monitor = try await BusMonitor(address: bus.unixAddress, matches: ["type='signal',path='\(Self.path)'"])
            let sim = try await Simulator.start(on: bus, ["--role", "primary"], directory: dir)
            defer { Task { await sim.process.terminate() } }
            #expect(sim.uniqueName.hasPrefix(":1."))

            #expect(try await readRole(bus) == #"s "primary""#)
            let gdbus = try await runChecked(["gdbus", "call", "--address", bus.unixAddress, "--dest", "org.example.HAManager",
                                              "--object-path", Self.path, "--method", "org.freedesktop.DBus.Properties.Get",
                                              Self.interface, "Role"])
            #expect(gdbus == "(<'primary'>,)")

            for role in ["secondary", "primary", "unknown-word"] {
                try await sim.send(role, expecting: role)
                let changed = try await monitor.waitFor("PropertiesChanged of Role to \(role)") {
                    $0.member == "PropertiesChanged" && $0.sender == sim.uniqueName && $0.body.count == 3
                        && $0.body[0].string == Self.interface && Self.changedRole($0.body[1]) == role
                }
                #expect(changed.path == Self.path)
                let signal = try await monitor.waitFor("RoleChanged \(role)") {
                    $0.member == "RoleChanged" && $0.interface == Self.interface && $0.sender == sim.uniqueName
                }
                #expect(signal.signature == "s")
                #expect(signal.body.first?.string == role)
                #expect(try await readRole(bus) == "s \"\(role)\"")
            }
            await monitor.stop()

            // Blank lines and surrounding blanks are ignored; the same role again changes nothing.
            sim.input.send("   ")
            try await sim.send("  unknown-word ", expecting: "unknown-word")

            sim.input.send("quit")
            let status = try await sim.process.waitForExit()
            #expect(WaitStatus.exitCode(status) == 0)
            let owner = try await run(["busctl", "--address=\(bus.unixAddress)", "status", "org.example.HAManager"])
            #expect(owner.status != 0, "the name is released on quit")
        }
    }

    @Test func introspectionShowsTheInterface() async throws {
        try await withBus { bus in
            let dir = try TemporaryDirectory(prefix: "bgw-sim")
            defer { dir.remove() }
            let sim = try await Simulator.start(on: bus, ["--role", "secondary"], directory: dir)
            defer { Task { await sim.process.terminate() } }
            let table = try await busctl(bus, ["introspect", "--no-legend", "org.example.HAManager", Self.path, Self.interface])
            let rows = table.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
            #expect(rows == [[".Role", "property", "s", "\"secondary\"", "emits-change"],
                             [".RoleChanged", "signal", "s", "-", "-"]], "\(table)")
        }
    }

    static let shippedXML = "\(packageRoot)/dbus/org.example.HAManager.xml"

    /// The interface the simulator publishes has exactly the members, types and access of the
    /// XML the project ships (compared by python's XML parser on both documents).
    @Test(.enabled(if: FileManager.default.fileExists(atPath: shippedXML), "dbus/org.example.HAManager.xml is not in the tree"))
    func introspectionMatchesTheShippedInterfaceFile() async throws {
        try await withBus { bus in
            let dir = try TemporaryDirectory(prefix: "bgw-sim")
            defer { dir.remove() }
            let sim = try await Simulator.start(on: bus, [], directory: dir)
            defer { Task { await sim.process.terminate() } }
            let live = try await busctl(bus, ["introspect", "--xml-interface", "org.example.HAManager", Self.path])
            let livePath = dir.file("live.xml")
            try live.write(toFile: livePath, atomically: true, encoding: .utf8)
            let script = """
                import sys, xml.etree.ElementTree as ET
                def members(path):
                    root = ET.parse(path).getroot()
                    out = set()
                    for i in root.iter('interface'):
                        if i.get('name') != 'org.example.HAManager': continue
                        for m in i:
                            args = tuple((a.get('type'), a.get('direction', '')) for a in m.iter('arg'))
                            out.add((m.tag, m.get('name'), m.get('type', ''), m.get('access', ''), args))
                    return out
                shipped, live = members(sys.argv[1]), members(sys.argv[2])
                if not shipped: sys.exit('no org.example.HAManager in ' + sys.argv[1])
                if shipped != live:
                    sys.exit('shipped only: %s; live only: %s' % (sorted(shipped - live), sorted(live - shipped)))
                """
            let result = try await run(["/usr/bin/python3", "-c", script, Self.shippedXML, livePath])
            #expect(result.status == 0, "\(result.stderr)")
        }
    }

    @Test func endOfInputKeepsItRunningUnlessAskedToExit() async throws {
        try await withBus { bus in
            let dir = try TemporaryDirectory(prefix: "bgw-sim")
            defer { dir.remove() }
            let exiting = try await Simulator.start(on: bus, ["--name", "org.example.HAManager.A", "--exit-on-eof"], directory: dir)
            exiting.input.end()
            #expect(WaitStatus.exitCode(try await exiting.process.waitForExit()) == 0)

            let staying = try await Simulator.start(on: bus, ["--name", "org.example.HAManager.B", "--role", "primary"], directory: dir)
            staying.input.end()
            // Still publishing after its input ended; then SIGTERM ends it with status 0.
            #expect(try await readRole(bus, name: "org.example.HAManager.B") == #"s "primary""#)
            #expect(!staying.process.hasExited)
            staying.process.signal(SIGTERM)
            #expect(WaitStatus.exitCode(try await staying.process.waitForExit()) == 0)
        }
    }

    @Test func aNameOwnedByAnotherConnectionIsAnError() async throws {
        try await withBus { bus in
            let dir = try TemporaryDirectory(prefix: "bgw-sim")
            defer { dir.remove() }
            let first = try await Simulator.start(on: bus, [], directory: dir)
            defer { Task { await first.process.terminate() } }
            let second = try await run([builtExecutablePath("bgworker-ha-sim"), "--bus", bus.address])
            #expect(second.status == 1)
            #expect(second.stderr.contains("org.example.HAManager is owned by another connection"))
            #expect(second.stdout.isEmpty)
        }
    }

    @Test func busFromTheEnvironmentAndBadArguments() async throws {
        try await withBus { bus in
            let dir = try TemporaryDirectory(prefix: "bgw-sim")
            defer { dir.remove() }
            let input = try NamedPipe(in: dir)
            let sim = try ChildProcess(input.asStandardInput(of: [builtExecutablePath("bgworker-ha-sim"), "--exit-on-eof"]),
                                       extraEnvironment: ["BGWORKER_BUS": bus.socketPath], captureStdout: true)
            let ready = try await sim.readLine(timeout: .seconds(15))
            #expect(ready?.hasPrefix("ready :1.") == true)
            input.end()
            #expect(WaitStatus.exitCode(try await sim.waitForExit()) == 0)

            let bad = try await run([builtExecutablePath("bgworker-ha-sim"), "--bus", "nonsense"])
            #expect(bad.status != 0)
            #expect(bad.stderr.contains("--bus"))
        }
    }
}
