import ArgumentParser
import BgWorkerCore
import ClientSupport
import DBus
import Glibc

/// is-active and is-failed: systemctl's checks, with its exit statuses.
protocol StateCheck: AsyncParsableCommand {
    /// The state that makes the check true.
    static var good: String { get }
    /// The status when no worker is in that state (but at least one exists).
    static var otherwise: Int32 { get }
    var options: GlobalOptions { get }
    var names: [String] { get }
    var quiet: Bool { get }
}

extension StateCheck {
    func validate() throws {
        try WorkerSelection.check(names, all: false, allowsAll: false)
    }

    func run() async throws {
        try await Session.run(options) { session in
            // One ListWorkers answers every name and pattern.
            let workers = try await session.client.list()
            var rows: [(String, String?)] = []
            for typed in names {
                if WorkerSelection.isPattern(typed) {
                    rows += workers.filter { fnmatch(typed, $0.name, 0) == 0 }.map { ($0.name, $0.state) }
                } else {
                    rows.append((typed, workers.first { $0.name.utf8.elementsEqual(typed.utf8) }?.state))
                }
            }
            if !quiet {
                session.print(rows.map { $0.1.map(Style.state) ?? "unknown" }.joined(separator: "\n"),
                              json: .array(rows.map { .object([("name", .string($0.0)), ("state", $0.1.map(JSON.string) ?? .null)]) }))
            }
            // As systemctl: 0 when any is in the good state; 4 when none of them exists.
            if rows.contains(where: { $0.1 == Self.good }) { return }
            throw CommandFailure(message: "", status: rows.contains { $0.1 != nil } ? Self.otherwise : Exit.noSuchWorker)
        }
    }
}

struct IsActive: StateCheck {
    static let configuration = CommandConfiguration(
        commandName: "is-active",
        abstract: "Print each worker's state; exit 0 if any of them is running.",
        discussion: """
            As systemctl is-active: exit 0 when at least one of the workers is running, 3 when \
            none is, 4 when none of the names is a worker (an unknown name prints `unknown`). \
            Patterns are accepted.
            """)
    static let good = "running"
    static let otherwise = Exit.notRunning
    @OptionGroup var options: GlobalOptions
    @Flag(name: .shortAndLong, help: "Print nothing; only the exit status.") var quiet = false
    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion) var names: [String] = []
}

struct IsFailed: StateCheck {
    static let configuration = CommandConfiguration(
        commandName: "is-failed",
        abstract: "Print each worker's state; exit 0 if any of them is failed.",
        discussion: """
            As systemctl is-failed: exit 0 when at least one of the workers is failed, 1 when \
            none is, 4 when none of the names is a worker (an unknown name prints `unknown`).
            """)
    static let good = "failed"
    static let otherwise = Exit.failure
    @OptionGroup var options: GlobalOptions
    @Flag(name: .shortAndLong, help: "Print nothing; only the exit status.") var quiet = false
    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion) var names: [String] = []
}

struct Show: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print every property of workers (or, with no name, of the daemon) as Name=value lines.",
        discussion: """
            As systemctl show: one Name=value line per property, sorted by name; a blank line \
            between workers. Booleans are yes/no, times µs since the epoch, as on the bus. \
            --property (-p) limits the output (repeat it or separate names with commas); an \
            unknown property prints nothing. --value prints the values alone.
            """)

    @OptionGroup var options: GlobalOptions

    @Option(name: [.short, .customLong("property")], parsing: .singleValue,
            help: ArgumentHelp("Only these properties.", valueName: "name[,name...]"))
    var properties: [String] = []

    @Flag(help: "Print the values only, without Name=.")
    var value = false

    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion)
    var names: [String] = []

    func run() async throws {
        let wanted = Set(properties.flatMap { $0.split(separator: ",").map { String($0.filter { $0 != " " }) } })
        try await Session.run(options) { session in
            let client = session.client
            var objects: [[String: DBusValue]] = []
            var failures: [(String, any Error)] = []
            if names.isEmpty {
                objects.append(try await client.allProperties(of: Service.managerPath, Service.managerInterface))
            } else {
                let selection = try await WorkerSelection.expand(names, all: false, client: client)
                failures += selection.unmatched.map { ($0, WorkerSelection.noMatch($0)) }
                for name in selection.names {
                    do {
                        objects.append(try await client.allProperties(of: try await client.workerPath(name), Service.workerInterface))
                    } catch {
                        failures.append((name, error))
                    }
                }
            }
            let kept = objects.map { all in all.filter { wanted.isEmpty || wanted.contains($0.key) }.sorted { $0.key < $1.key } }
            if session.json {
                let documents = kept.map { JSON.object($0.map { ($0.key, JSON($0.value)) }) }
                if !documents.isEmpty { writeLine((names.isEmpty ? documents[0] : .array(documents)).rendered) }
            } else if kept.contains(where: { !$0.isEmpty }) {
                // An unknown property prints nothing, not blank lines.
                writeLine(kept.filter { !$0.isEmpty }.map { pairs in
                    pairs.map { value ? Self.text($0.value) : "\($0.key)=\(Self.text($0.value))" }.joined(separator: "\n")
                }.joined(separator: "\n\n"))
            }
            try WorkerSelection.report(failures)
        }
    }

    /// A value as systemctl shows one: strings bare, booleans yes/no, numbers in decimal.
    static func text(_ value: DBusValue) -> String {
        switch value.unwrappingVariant {
        case .string(let s): s
        case .bool(let b): b ? "yes" : "no"
        case .objectPath(let p): p.rawValue
        case let other: JSON(other).rendered
        }
    }
}

