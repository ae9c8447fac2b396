// bgworker-ha-sim: a small reference HA manager. It publishes org.example.HAManager (the
// interface bgworkerd follows with `[ha] source = "dbus"`) and takes its role from the command
// line and from lines on standard input, so tests and demos can drive failovers by hand.
import ArgumentParser
import BgWorkerCore
import ClientSupport
import DBus
import Glibc

struct HASimOptions: ParsableCommand {  // a command, so that its configuration (name, --version) is used
    static let configuration = CommandConfiguration(
        commandName: "bgworker-ha-sim",
        abstract: "A reference HA manager publishing org.example.HAManager, driven from standard input.",
        discussion: """
            Standard input takes one word per line: `primary` or `secondary` set the role; any other \
            word sets that raw value (bgworkerd reads it as `unknown`); `quit` exits. On end of input \
            it keeps running unless --exit-on-eof. It prints `ready <unique-name>` once it owns its \
            name and `role <role>` once each change has been sent.
            """,
        version: programVersion)

    @Option(help: "The bus: system, session, a D-Bus address or a socket path (default: $BGWORKER_BUS, else system).")
    var bus: BusOption?

    @Option(help: "The well-known name to own.")
    var name = "org.example.HAManager"

    @Option(help: "The role at start.")
    var role = "secondary"

    @Flag(help: "Exit when standard input ends.")
    var exitOnEof = false

    @Flag(help: "Print the version and exit.")
    var version = false

    func validate() throws {
        guard NameRules.isValidBusName(name), !name.hasPrefix(":") else {
            throw ValidationError("--name \(name): not a well-known bus name")
        }
        guard !role.isEmpty, !role.utf8.contains(0) else { throw ValidationError("--role must be a word") }
    }
}

enum HAManagerInterface {
    static let name = "org.example.HAManager"
    static let path = try! ObjectPath("/org/example/HAManager")

    /// The object: `Role` (read; PropertiesChanged on change) and `RoleChanged(s role)`.
    static func object(role: String) throws -> ExportedObject {
        try ExportedObject(path: path, interfaces: [
            DBusInterface(
                name,
                properties: [DBusProperty("Role", .string, initial: .string(role))],
                signals: [DBusSignalDeclaration("RoleChanged", [DBusArgument("role", .string)])]),
        ])
    }
}

/// What the simulator reacts to, in one sequence.
enum Input: Sendable {
    case line(String)
    case endOfInput
    case disconnected(DBusConnectionError)
}

func fail(_ message: String) -> Never {
    writeLine("bgworker-ha-sim: \(message)", to: STDERR_FILENO)
    exit(1)
}

/// Publishes the role, then follows standard input until `quit` (or its end with
/// --exit-on-eof) or until the bus connection ends.
func simulate(_ options: HASimOptions, on bus: BusOption) async -> Never {
    let connection: DBusConnection
    let manager: ExportedObject
    do {
        connection = try await DBusConnection.connect(bus.address, timeout: .seconds(10))
        manager = try HAManagerInterface.object(role: options.role)
        // Exported before the name is requested: whoever sees the name can read the role.
        try connection.export(manager)
        let reply = try await connection.requestName(options.name, flags: [.doNotQueue])
        guard reply == .primaryOwner || reply == .alreadyOwner else { fail("\(options.name) is owned by another connection") }
    } catch {
        fail("cannot publish \(options.name) on the \(bus) bus: \(error)")
    }
    writeLine("ready \(connection.uniqueName ?? "")")

    let (inputs, feed) = AsyncStream<Input>.makeStream()
    startThread {
        while let line = readLine(strippingNewline: true) { feed.yield(.line(line)) }
        feed.yield(.endOfInput)
    }
    Task {
        for await event in connection.events {
            if case .disconnected(let error) = event { feed.yield(.disconnected(error)) }
        }
    }

    var role = options.role
    for await input in inputs {
        switch input {
        case .line(let raw):
            let word = String(raw.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
            if word.isEmpty { continue }
            if word == "quit" {
                _ = try? await connection.releaseName(options.name)
                exit(0)
            }
            if word != role {
                do {
                    try manager.setProperty(HAManagerInterface.name, "Role", .string(word))
                    try manager.emitSignal(interface: HAManagerInterface.name, member: "RoleChanged", arguments: [.string(word)])
                    // A round trip to the bus: its reply comes after both signals have left, so
                    // `role` is printed only once they are on the bus.
                    _ = try await connection.nameOwner(options.name)
                } catch {
                    fail("cannot announce role \(word): \(error)")
                }
                role = word
            }
            writeLine("role \(role)")
        case .endOfInput:
            if options.exitOnEof { exit(0) }
        case .disconnected(let error):
            fail("lost the bus connection: \(error)")
        }
    }
    exit(0)
}

TerminationSignals.prepare()
let options = HASimOptions.parseOrExitWithUsageStatus()
if options.version {
    writeLine(bgworkerVersion)
    exit(0)
}
let bus: BusOption
do { bus = try BusOption.resolve(options.bus, environment: "BGWORKER_BUS") } catch {
    HASimOptions.exitForError(error)
}
Task.detached { await simulate(options, on: bus) }
_ = TerminationSignals.wait()
exit(0)
