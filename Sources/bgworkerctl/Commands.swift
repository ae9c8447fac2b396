import ArgumentParser
import ClientSupport
import DBus
import Glibc

/// Options of every command, accepted before or after the command's name.
struct GlobalOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "The bus: system, session, a D-Bus address or a socket path.",
        discussion: "Default: $BGWORKER_BUS, else the system bus.", valueName: "bus"))
    var bus: BusOption?

    @Flag(help: "Machine-readable output: one JSON document (watch: one JSON object per line).")
    var json = false
}

/// Exit statuses (and, for every failure, the D-Bus error's text on standard error).
enum Exit {
    static let failure: Int32 = 1
    static let noSuchWorker: Int32 = 4
}

/// A failure already explained to the user, with the status to exit with.
struct CommandFailure: Error {
    var message: String
    var status: Int32
}

/// What every command does around its own work: one connection, output, and errors turned into
/// a message on standard error and an exit status.
struct Session {
    let client: ServiceClient
    let json: Bool

    static func run(_ options: GlobalOptions, _ body: (Session) async throws -> Void) async throws {
        let bus = try BusOption.resolve(options.bus, environment: "BGWORKER_BUS")
        let connection: DBusConnection
        do {
            connection = try await DBusConnection.connect(bus.address, timeout: .seconds(10))
        } catch let error as DBusConnectionError {
            // One line: libdbus's own words, without our error code's name.
            throw CommandFailure(message: "cannot connect to the \(bus) bus: \(error.message)", status: Exit.failure)
        } catch {
            throw CommandFailure(message: "cannot connect to the \(bus) bus: \(error)", status: Exit.failure)
        }
        defer { connection.close() }
        do {
            try await body(Session(client: ServiceClient(connection: connection), json: options.json))
        } catch let error as DBusError {
            throw CommandFailure(message: text(of: error, bus: bus), status: error.name == Service.noSuchWorker ? Exit.noSuchWorker : Exit.failure)
        } catch let error as DBusConnectionError {
            throw CommandFailure(message: error.message, status: Exit.failure)
        }
    }

    /// A failure in words an admin can act on: who may do it rather than the bus policy's rule
    /// dump, "not running" rather than ServiceUnknown; other errors as `text(of:)` says them.
    static func text(of error: any Error, bus: BusOption?) -> String {
        guard let error = error as? DBusError else { return text(of: error) }
        switch error.name {
        case DBusError.Name.accessDenied:
            // The daemon names its admin group ("members of group 'x'"); the bus policy only
            // lets the shipped group through.
            let group = error.message.firstRange(of: "members of group '").map { start in
                String(error.message[start.upperBound...].prefix { $0 != "'" })
            } ?? (error.message.contains("only root may") ? nil : "bgworker-admin")
            let who = group.map { "root or membership in group `\($0)`" } ?? "root"
            return "`\(commandName())` needs \(who)"
        case DBusError.Name.serviceUnknown, DBusError.Name.nameHasNoOwner:
            return "bgworkerd is not running on this bus" + (bus.map { " (\($0))" } ?? "")
        default:
            return text(of: error)
        }
    }

    /// The command as typed (`disable`, `log-level`): the first argument that names one.
    static func commandName() -> String {
        let names = Set(BgWorkerCtl.configuration.subcommands.map { $0._commandName })
        return CommandLine.arguments.dropFirst().first { names.contains($0) } ?? "this"
    }

    /// A failure as bgworkerctl says it: the daemon's message and the D-Bus error's name.
    static func text(of error: any Error) -> String {
        guard let error = error as? DBusError else { return "\(error)" }
        return error.message.isEmpty ? error.name : "\(error.message) (\(error.name))"
    }

    /// Prints text, or the JSON document with --json.
    func print(_ text: @autoclosure () -> String, json document: @autoclosure () -> JSON) {
        writeLine(json ? document().rendered : text())
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the daemon and every worker, or one worker in detail.")

    @OptionGroup var options: GlobalOptions

    @Argument(help: "A worker's name.")
    var name: String?

    func run() async throws {
        try await Self.show(name, options)
    }

    static func show(_ name: String?, _ options: GlobalOptions) async throws {
        try await Session.run(options) { session in
            if let name {
                let worker = try await session.client.worker(named: name)
                var lines = [
                    ("Name", worker.name),
                    ("State", worker.state + (worker.stateReason.isEmpty ? "" : " (\(worker.stateReason))")),
                    ("Since", Time.local(microseconds: worker.stateChangedAt)),
                    ("Pid", worker.pid == 0 ? "-" : String(worker.pid)), ("Enabled", worker.enabled ? "yes" : "no"),
                    ("Restarts", String(worker.restarts)), ("Last exit", worker.lastExit.isEmpty ? "-" : worker.lastExit),
                    ("Run on", worker.runOn),
                ]
                if let level = worker.logLevelText { lines.append(("Log level", level)) }
                lines.append(("Object", worker.path))
                // The last lines, as systemctl status shows them; a daemon without Logs shows none.
                let output = session.json ? [] : ((try? await session.client.logs(of: name, count: 10)) ?? [])
                let tail = output.isEmpty ? "" : "\n\n" + output.map { $0.rendered(worker: worker.name) }.joined(separator: "\n")
                session.print(fields(lines) + tail, json: worker.json)
                return
            }
            async let managerInfo = session.client.manager()
            async let workerInfos = session.client.workers()
            let (manager, workers) = try await (managerInfo, workerInfos)
            let summary = fields([("Version", manager.version), ("Runner", manager.runner),
                                  ("HA role", manager.haRole), ("Log level", manager.logLevel)])
            let body = workers.isEmpty ? "No workers." : table(WorkerInfo.header, workers.map(\.row))
            session.print(summary + "\n\n" + body,
                          json: .object(manager.jsonMembers + [("workers", .array(workers.map(\.json)))]))
        }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the workers with their state.")

    @OptionGroup var options: GlobalOptions

    func run() async throws {
        try await Session.run(options) { session in
            let workers = try await session.client.list()
            session.print(workers.isEmpty ? "No workers." : table(ListedWorker.header, workers.map(\.row)),
                          json: .array(workers.map(\.json)))
        }
    }
}

/// Enable, Disable, Restart: silent on success; with --json, the worker as `status NAME` shows it.
protocol WorkerAction: AsyncParsableCommand {
    static var method: String { get }
    var options: GlobalOptions { get }
    var name: String { get }
}

extension WorkerAction {
    func run() async throws {
        try await Session.run(options) { session in
            _ = try await session.client.callManager(Self.method, [.string(name)], timeout: ServiceClient.changeTimeout)
            if session.json { writeLine(try await session.client.worker(named: name).json.rendered) }
        }
    }
}

struct Enable: WorkerAction {
    static let configuration = CommandConfiguration(
        abstract: "Enable a worker (persisted); it starts when the HA role allows. Restarts a failed one.")
    static let method = "Enable"
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The worker's name.") var name: String
}

struct Disable: WorkerAction {
    static let configuration = CommandConfiguration(abstract: "Disable a worker (persisted) and stop it.")
    static let method = "Disable"
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The worker's name.") var name: String
}

struct Restart: WorkerAction {
    static let configuration = CommandConfiguration(
        abstract: "Stop and start a worker again; clears failed and its restart counter.")
    static let method = "Restart"
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The worker's name.") var name: String
}

/// Start and Stop: one or more workers, all called at once (each call replies when its worker is
/// done); every failure is reported; silent on success; with --json, an array of the workers as
/// `status NAME` shows them, in the order given.
protocol WorkersAction: AsyncParsableCommand {
    static var method: String { get }
    var options: GlobalOptions { get }
    var names: [String] { get }
}

extension WorkersAction {
    func run() async throws {
        try await Session.run(options) { session in
            let client = session.client
            // One call per name, all in flight at once: stopping ten workers takes the longest
            // stop timeout, not their sum.
            let failures = await withTaskGroup(of: (Int, (any Error)?).self) { group in
                for (index, name) in names.enumerated() {
                    group.addTask {
                        do {
                            _ = try await client.callManager(Self.method, [.string(name)], timeout: ServiceClient.changeTimeout)
                            return (index, nil)
                        } catch {
                            return (index, error)
                        }
                    }
                }
                var failures: [(Int, any Error)] = []
                for await (index, error) in group { if let error { failures.append((index, error)) } }
                return failures.sorted { $0.0 < $1.0 }
            }
            if let (_, first) = failures.first {
                // The first failure (in the order given) sets the exit status and is said last;
                // the others are said here.
                for (index, error) in failures.dropFirst() {
                    writeLine("bgworkerctl: \(names[index]): \(Session.text(of: error, bus: nil))", to: STDERR_FILENO)
                }
                throw first
            }
            if session.json {
                var workers: [JSON] = []
                for name in names { workers.append(try await client.worker(named: name).json) }
                writeLine(JSON.array(workers).rendered)
            }
        }
    }
}

struct Start: WorkersAction {
    static let configuration = CommandConfiguration(
        abstract: "Start stopped or failed workers (clears failed and the restart counter); running ones are left alone.")
    static let method = "Start"
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The workers' names.") var names: [String]
}

struct Stop: WorkersAction {
    static let configuration = CommandConfiguration(
        abstract: "Stop workers now, without touching the configuration or the persisted intent (emergency stop).",
        discussion: """
            The state is `stopped` until `start`, `restart`, `enable` or a restart of bgworkerd. Nothing \
            is written to disk, so it works with a read-only or full state directory. Returns once \
            every process is gone. A disabled worker is left as it is.
            """)
    static let method = "Stop"
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The workers' names.") var names: [String]
}

struct Reload: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-read the configuration (an invalid one changes nothing and is reported).")

    @OptionGroup var options: GlobalOptions

    func run() async throws {
        try await Session.run(options) { session in
            _ = try await session.client.callManager("Reload", timeout: ServiceClient.changeTimeout)
            if session.json { writeLine(JSON.array(try await session.client.list().map(\.json)).rendered) }
        }
    }
}

struct LogLevel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log-level",
        abstract: "Show the daemon's log level, or set it (for the daemon and its workers).",
        discussion: """
            Levels: trace debug info notice warning error critical. With --worker NAME: that \
            worker's own level, which wins over the daemon's (not persisted); '' or --clear \
            clears it, and the worker follows the daemon's level again.
            """)

    @OptionGroup var options: GlobalOptions

    @Option(help: "A worker's name: show or set its own level.")
    var worker: String?

    @Flag(help: "With --worker: clear the worker's own level.")
    var clear = false

    @Argument(help: "The new level.")
    var level: String?

    func validate() throws {
        if clear && worker == nil { throw ValidationError("--clear needs --worker NAME") }
        if clear && level != nil { throw ValidationError("--clear takes no level") }
        if worker == nil && level == "" { throw ValidationError("the daemon's log level cannot be empty") }
    }

    func run() async throws {
        try await Session.run(options) { session in
            if let worker {
                let path = try await session.client.workerPath(worker)
                if let newLevel = clear ? "" : level {
                    try await session.client.setProperty(of: path, Service.workerInterface, "LogLevel", newLevel)
                    if !session.json { return }
                }
                let info = try await session.client.worker(named: worker)
                session.print(
                    fields([("Own", info.logLevel.isEmpty ? "- (follows the daemon's)" : info.logLevel),
                            ("Effective", info.effectiveLogLevel)]),
                    json: .object([("name", .string(info.name)), ("logLevel", .string(info.logLevel)),
                                   ("effectiveLogLevel", .string(info.effectiveLogLevel))]))
            } else if let level {
                try await session.client.setManagerProperty("LogLevel", level)
                if session.json { writeLine(JSON.object([("logLevel", .string(level))]).rendered) }
            } else {
                let current = try await session.client.managerProperty("LogLevel")
                session.print(current, json: .object([("logLevel", .string(current))]))
            }
        }
    }
}

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a worker's last output lines, kept in memory by bgworkerd.",
        discussion: """
            bgworkerd keeps the last log-buffer-lines lines (default 200) of each worker of the \
            process runner. Under the systemd runner the workers write to the journal: use \
            journalctl -u bgworker-NAME.service (or journalctl -f to follow).
            """)

    @OptionGroup var options: GlobalOptions

    @Option(name: [.short, .customLong("lines")], help: "How many lines (the newest).")
    var n: UInt32 = 10

    @Argument(help: "The worker's name.")
    var name: String

    func run() async throws {
        try await Session.run(options) { session in
            let lines = try await session.client.logs(of: name, count: n)
            if session.json {
                writeLine(JSON.array(lines.map(\.json)).rendered)
            } else if !lines.isEmpty {
                writeLine(lines.map { $0.rendered(worker: name) }.joined(separator: "\n"))
            }
        }
    }
}

struct HA: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ha",
        abstract: "Show the HA role: standalone, primary, secondary or unknown.")

    @OptionGroup var options: GlobalOptions

    func run() async throws {
        try await Session.run(options) { session in
            let role = try await session.client.managerProperty("HARole")
            session.print(role, json: .object([("haRole", .string(role))]))
        }
    }
}

struct BgWorkerCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bgworkerctl",
        abstract: "Control bgworkerd, the background worker supervisor, over D-Bus.",
        discussion: """
            Options are accepted before or after the command. Exit status: 0 on success, 4 for an \
            unknown worker (org.example.BgWorker.Error.NoSuchWorker), 1 for any other failure, with \
            the D-Bus error's text on standard error.
            """,
        version: programVersion,
        subcommands: [Status.self, List.self, Enable.self, Disable.self, Restart.self, Start.self, Stop.self,
                      Reload.self, LogLevel.self, Logs.self, HA.self, Watch.self])

    @OptionGroup var options: GlobalOptions

    /// No command is `status` (not a default subcommand, which would take an unknown command
    /// for a worker's name).
    func run() async throws {
        try await Status.show(nil, options)
    }
}
