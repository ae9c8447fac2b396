import ArgumentParser
import BgWorkerAPI
import BgWorkerCore
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

    @Flag(help: "Accepted for systemctl's sake: bgworkerctl never pages its output.")
    var noPager = false
}

/// Exit statuses (and, for every failure, the D-Bus error's text on standard error). Usage
/// errors exit `usageErrorStatus` (1), as in every bgworker program.
enum Exit {
    static let failure: Int32 = 1
    /// `is-active`: none of the workers runs (systemctl's, LSB's "program is not running").
    static let notRunning: Int32 = 3
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
        abstract: "Show the daemon and every worker, or workers in detail.",
        discussion: """
            With names or glob patterns ('sync-*'), as systemctl status: each worker's detail and \
            its last 10 output lines, a blank line between workers. --json: the worker's object \
            for one name, an array for several or a pattern.
            """)

    @OptionGroup var options: GlobalOptions

    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion)
    var names: [String] = []

    func run() async throws {
        try await Self.show(names, options)
    }

    static func show(_ name: String?, _ options: GlobalOptions) async throws {
        try await show(name.map { [$0] } ?? [], options)
    }

    static func show(_ names: [String], _ options: GlobalOptions) async throws {
        try await Session.run(options) { session in
            if !names.isEmpty {
                let selection = try await WorkerSelection.expand(names, all: false, client: session.client)
                var failures = selection.unmatched.map { ($0, WorkerSelection.noMatch($0) as any Error) }
                var texts: [String] = []
                var documents: [JSON] = []
                for name in selection.names {
                    do {
                        let (text, document) = try await detail(of: name, session)
                        texts.append(text)
                        documents.append(document)
                    } catch {
                        failures.append((name, error))
                    }
                }
                let single = names.count == 1 && !WorkerSelection.isPattern(names[0])
                if !documents.isEmpty {
                    session.print(texts.joined(separator: "\n\n"), json: single ? documents[0] : .array(documents))
                }
                try WorkerSelection.report(failures)
                return
            }
            async let managerInfo = session.client.manager()
            async let workerInfos = session.client.workers()
            let (manager, workers) = try await (managerInfo, workerInfos)
            var summaryFields = [("Version", manager.version), ("Runner", manager.runner),
                                 ("HA role", manager.haRole), ("Log level", manager.logLevel)]
            if let maintenance = manager.maintenance {
                // The oldest holder, whose reason the held workers show.
                let holder = maintenance ? try? await session.client.inhibitors().first : nil
                summaryFields.append(("Maintenance", !maintenance ? "no" : holder.map { "yes (\(Terminal.escaped($0.who)): \(Terminal.escaped($0.why)))" } ?? "yes"))
            }
            let summary = fields(summaryFields)
            let body = workers.isEmpty ? "No workers." : table(WorkerInfo.header, workers.map(\.row), colour: WorkerInfo.colour)
            session.print(summary + "\n\n" + body,
                          json: .object(manager.jsonMembers + [("workers", .array(workers.map(\.json)))]))
        }
    }

    /// One worker as `status NAME` shows it: its fields and its last 10 output lines.
    private static func detail(of name: String, _ session: Session) async throws -> (String, JSON) {
        let worker = try await session.client.worker(named: name)
        let readiness = worker.readinessFields
        var lines = [
            ("Name", worker.name),
            ("State", Style.state(worker.state) + (worker.stateReason.isEmpty ? "" : " (\(Terminal.escaped(worker.stateReason)))")),
            ("Since", Time.local(microseconds: worker.stateChangedAt)),
        ] + readiness.ready + [("Pid", worker.pid == 0 ? "-" : String(worker.pid))] + readiness.status + [
            ("Enabled", worker.enabled ? "yes" : "no"),
            ("Restarts", String(worker.restarts)), ("Last exit", worker.lastExit.isEmpty ? "-" : worker.lastExit),
            ("Run on", worker.runOn),
        ]
        if let level = worker.logLevelText { lines.append(("Log level", level)) }
        lines.append(("Object", worker.path))
        // The last lines, as systemctl status shows them; a daemon without Logs shows none.
        let output = session.json ? [] : ((try? await session.client.logs(of: name, count: 10)) ?? [])
        var tail = output.isEmpty ? "" : "\n\n" + output.map { $0.rendered(worker: worker.name) }.joined(separator: "\n")
        if output.isEmpty, !session.json, (try? await session.client.managerProperty("Runner")) == "systemd" {
            tail = "\n\nOutput: in the journal, `bgworkerctl logs \(name)` or `journalctl -u \(systemdUnitName(forWorker: name))`"
        }
        return (fields(lines) + tail, worker.json)
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the workers with their state.")

    @OptionGroup var options: GlobalOptions

    func run() async throws {
        try await Session.run(options) { session in
            let workers = try await session.client.list()
            session.print(workers.isEmpty ? "No workers." : table(ListedWorker.header, workers.map(\.row), colour: ListedWorker.colour),
                          json: .array(workers.map(\.json)))
        }
    }
}

/// Enable, Disable, Restart, Start and Stop: one or more workers by name or glob pattern (or
/// `--all` where the command offers it), all called at once (each call replies when its worker is
/// done); every failure is reported; silent on success; with --json, an array of the workers as
/// `status NAME` shows them, in the order given.
protocol WorkersAction: AsyncParsableCommand {
    static var method: String { get }
    var options: GlobalOptions { get }
    var names: [String] { get }
    /// `--all`; nil where the command has no such flag.
    var everyWorker: Bool? { get }
}

extension WorkersAction {
    var everyWorker: Bool? { nil }

    func validate() throws {
        try WorkerSelection.check(names, all: everyWorker ?? false, allowsAll: everyWorker != nil)
    }

    func run() async throws {
        try await Session.run(options) { session in
            let client = session.client
            // Start and Restart refuse a disabled worker: `--all` means every enabled one there.
            let selection = try await WorkerSelection.expand(
                names, all: everyWorker ?? false, client: client,
                include: Self.method == "Start" || Self.method == "Restart" ? { $0.enabled } : { _ in true })
            let targets = selection.names
            // One call per name, all in flight at once: stopping ten workers takes the longest
            // stop timeout, not their sum.
            let results = await withTaskGroup(of: (Int, (any Error)?).self) { group in
                for (index, name) in targets.enumerated() {
                    group.addTask {
                        do {
                            _ = try await client.callManager(Self.method, [.string(name)], timeout: ServiceClient.changeTimeout)
                            return (index, nil)
                        } catch {
                            return (index, error)
                        }
                    }
                }
                var failures: [(String, any Error)] = []
                for await (index, error) in group { if let error { failures.append((targets[index], error)) } }
                return failures.sorted { a, b in targets.firstIndex(of: a.0)! < targets.firstIndex(of: b.0)! }
            }
            try WorkerSelection.report(selection.unmatched.map { ($0, WorkerSelection.noMatch($0)) } + results)
            if session.json {
                var workers: [JSON] = []
                for name in targets { workers.append(try await client.worker(named: name).json) }
                writeLine(JSON.array(workers).rendered)
            }
        }
    }
}

struct Enable: WorkersAction {
    static let configuration = CommandConfiguration(
        abstract: "Enable workers (persisted); each starts when the HA role allows. Restarts a failed one.")
    static let method = "Enable"
    @OptionGroup var options: GlobalOptions
    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion) var names: [String] = []
}

struct Disable: WorkersAction {
    static let configuration = CommandConfiguration(abstract: "Disable workers (persisted) and stop them.")
    static let method = "Disable"
    @OptionGroup var options: GlobalOptions
    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion) var names: [String] = []
}

struct Restart: WorkersAction {
    static let configuration = CommandConfiguration(
        abstract: "Stop and start workers again; clears failed and the restart counter.")
    static let method = "Restart"
    @OptionGroup var options: GlobalOptions
    @Flag(name: .customLong("all"), help: "Every enabled worker.") var all = false
    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion) var names: [String] = []
    var everyWorker: Bool? { all }
}

struct Start: WorkersAction {
    static let configuration = CommandConfiguration(
        abstract: "Start stopped or failed workers (clears failed and the restart counter); running ones are left alone.")
    static let method = "Start"
    @OptionGroup var options: GlobalOptions
    @Flag(name: .customLong("all"), help: "Every enabled worker.") var all = false
    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion) var names: [String] = []
    var everyWorker: Bool? { all }
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
    @Flag(name: .customLong("all"), help: "Every worker.") var all = false
    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion) var names: [String] = []
    var everyWorker: Bool? { all }
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

    @Option(help: "A worker's name: show or set its own level.", completion: WorkerNames.completion)
    var worker: String?

    @Flag(help: "With --worker: clear the worker's own level.")
    var clear = false

    @Argument(help: "The new level (any case; warn is warning).",
              completion: .list(BgWorkerCore.LogLevel.allCases.map(\.rawValue)))
    var level: String?

    /// The level as the daemon spells it (`WARN` is `warning`); "" stays "" (clears a worker's);
    /// an unknown one goes as typed, for the daemon to refuse (it knows its levels).
    var canonicalLevel: String? {
        level.map { BgWorkerCore.LogLevel(parsing: $0)?.rawValue ?? $0 }
    }

    func validate() throws {
        if clear && worker == nil { throw ValidationError("--clear needs --worker NAME") }
        if clear && level != nil { throw ValidationError("--clear takes no level") }
        if worker == nil && level == "" { throw ValidationError("the daemon's log level cannot be empty") }
    }

    func run() async throws {
        try await Session.run(options) { session in
            if let worker {
                let path = try await session.client.workerPath(worker)
                if let newLevel = clear ? "" : canonicalLevel {
                    try await session.client.setProperty(of: path, Service.workerInterface, "LogLevel", newLevel)
                    if !session.json { return }
                }
                let info = try await session.client.worker(named: worker)
                session.print(
                    fields([("Own", info.logLevel.isEmpty ? "- (follows the daemon's)" : info.logLevel),
                            ("Effective", info.effectiveLogLevel)]),
                    json: .object([("name", .string(info.name)), ("logLevel", .string(info.logLevel)),
                                   ("effectiveLogLevel", .string(info.effectiveLogLevel))]))
            } else if let level = canonicalLevel {
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
        abstract: "Print a worker's last output lines, kept in memory by bgworkerd; -f follows new ones.",
        discussion: """
            bgworkerd keeps the last log-buffer-lines lines (default 200) of each worker of the \
            process runner. Under the systemd runner the workers write to the journal, and logs \
            becomes journalctl --lines N -u bgworker-NAME.service. -f follows through the journal (journalctl -f): \
            the worker's unit under the systemd runner, the daemon's entries with BGWORKER_NAME \
            under the process runner (which writes there wherever journald runs); without a \
            journal, through bgworkerd itself (FollowLogs): it ends when the worker is removed \
            or the daemon exits.
            """)

    @OptionGroup var options: GlobalOptions

    @Option(name: [.short, .customLong("lines")], help: "How many lines (the newest).")
    var n: UInt32 = 10

    @Flag(name: [.short, .customLong("follow")], help: "Print new lines as they come (through the journal where journald runs).")
    var follow = false

    @Argument(help: "The worker's name.", completion: WorkerNames.completion)
    var name: String

    func run() async throws {
        try await Session.run(options) { session in
            if follow { return try await followInJournal(session) }
            let lines = try await session.client.logs(of: name, count: n)
            // The systemd runner keeps none: its workers' units write to the journal.
            if lines.isEmpty, try await session.client.managerProperty("Runner") == "systemd" {
                return try readJournal(session, ["--unit", systemdUnitName(forWorker: name)], follow: false)
            }
            if session.json {
                writeLine(JSON.array(lines.map(\.json)).rendered)
            } else if !lines.isEmpty {
                writeLine(lines.map { $0.rendered(worker: name) }.joined(separator: "\n"))
            }
        }
    }

    /// Becomes `journalctl -f` on the worker's lines, or, without journald, reads them from the
    /// daemon (`FollowLogs`). Neither polls.
    private func followInJournal(_ session: Session) async throws {
        _ = try await session.client.workerPath(name)  // NoSuchWorker (4) for an unknown name
        if try await session.client.managerProperty("Runner") == "systemd" {
            try readJournal(session, ["--unit", systemdUnitName(forWorker: name)], follow: true)
        } else if access(Self.journalSocket, F_OK) == 0 {
            // The process runner's entries (WorkerOutput): this worker's, from a bgworkerd.
            try readJournal(session, ["BGWORKER_NAME=\(name)", "_COMM=bgworkerd"], follow: true)
        } else {
            try await followThroughDaemon(session)
        }
    }

    /// Prints the records of a `FollowLogs` socket until the daemon ends it (the worker was
    /// removed, or bgworkerd exited): exit 1 then, with the reason on stderr.
    private func followThroughDaemon(_ session: Session) async throws {
        let socket = try await session.client.followLogs(of: name, count: n)
        session.client.connection.close()
        guard let fd = socket.take() else { throw CommandFailure(message: "FollowLogs gave no socket", status: Exit.failure) }
        defer { Glibc.close(fd) }
        // A line is at most 4,096 bytes, 12,288 once bytes that are not UTF-8 are replaced.
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        // Lines counted in the first record are the oldest of the backlog (more than the socket holds).
        var first = true
        while true {
            let count = buffer.withUnsafeMutableBytes { raw in recv(fd, raw.baseAddress, raw.count, 0) }
            if count == 0 { break }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                throw CommandFailure(message: "cannot read \(name)'s output: \(String(cString: strerror(errno)))", status: Exit.failure)
            }
            guard let record = FollowedLogRecord(decoding: buffer[0..<count]) else { continue }
            let line = LogLine(time: record.time, text: record.text)
            if session.json {
                if record.dropped > 0 { writeLine(JSON.object([("dropped", .uint(UInt64(record.dropped)))]).rendered) }
                writeLine(line.json.rendered)
            } else {
                if record.dropped > 0 {
                    writeLine(first ? "-- \(record.dropped) older lines not shown: more than the daemon's socket holds --"
                                    : "-- \(record.dropped) lines not shown: this reader fell behind --")
                }
                writeLine(line.rendered(worker: name))
            }
            first = false
        }
        throw CommandFailure(
            message: "bgworkerd stopped following \(name): the worker was removed from the configuration, or the daemon exited",
            status: Exit.failure)
    }

    /// Becomes journalctl on `matches`: the last N lines, and new ones with `follow`.
    private func readJournal(_ session: Session, _ matches: [String], follow: Bool) throws {
        var argv = ["journalctl"] + (follow ? ["--follow"] : ["--no-pager"]) + ["--lines", String(n)] + matches
        if session.json { argv += ["--output", "json"] }
        session.client.connection.close()
        var arguments = argv.map { strdup($0) } + [nil]
        execvp("journalctl", &arguments)
        throw CommandFailure(message: "cannot run journalctl: \(String(cString: strerror(errno)))", status: Exit.failure)
    }

    static let journalSocket = "/run/systemd/journal/socket"
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
            Options are accepted before or after the command. Commands that act on workers take \
            several names and glob patterns ('sync-*'). Exit status: 0 on success, 4 for an unknown \
            worker (org.example.BgWorker.Error.NoSuchWorker) or a pattern that matches none, 1 for \
            any other failure and for usage errors, with the reason on standard error; is-active \
            and is-failed as systemctl's (see their help).
            """,
        version: programVersion,
        subcommands: [Status.self, List.self, Show.self, Cat.self, IsActive.self, IsFailed.self, Enable.self, Disable.self,
                      Restart.self, Start.self, Stop.self, Reload.self, Inhibit.self, Maintenance.self, LogLevel.self, Logs.self, HA.self,
                      Watch.self])

    @OptionGroup var options: GlobalOptions

    /// No command is `status` (not a default subcommand, which would take an unknown command
    /// for a worker's name).
    func run() async throws {
        try await Status.show(nil, options)
    }
}
