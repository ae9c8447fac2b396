import ArgumentParser
import ClientSupport
import DBus
import Glibc

/// Which workers a command acts on: names as typed, glob patterns (`sync-*`, as systemctl's:
/// fnmatch against every worker's name), or `--all`.
struct WorkerSelection {
    /// The workers, each once, in the order typed (a pattern's matches sorted by name).
    var names: [String]
    /// Patterns that matched no worker.
    var unmatched: [String]

    static let namesHelp = ArgumentHelp("Worker names or glob patterns ('sync-*').", valueName: "name")

    static func isPattern(_ text: String) -> Bool { text.contains { $0 == "*" || $0 == "?" || $0 == "[" } }

    /// The usage rules: at least one name, or `--all` where offered, not both.
    static func check(_ names: [String], all: Bool, allowsAll: Bool) throws {
        if all && !names.isEmpty { throw ValidationError("give worker names or --all, not both") }
        if !all && names.isEmpty {
            throw ValidationError(allowsAll ? "give at least one worker name or pattern, or --all"
                                                : "give at least one worker name or pattern (no --all here: enable, disable and the reads take names)")
        }
    }

    /// Names stay as typed (the daemon answers NoSuchWorker for an unknown one); patterns and
    /// `--all` read ListWorkers once. `include` filters what `--all` selects.
    static func expand(_ typed: [String], all: Bool, client: ServiceClient,
                       include: (ListedWorker) -> Bool = { _ in true }) async throws -> WorkerSelection {
        if all { return WorkerSelection(names: try await client.list().filter(include).map(\.name), unmatched: []) }
        guard typed.contains(where: isPattern) else { return WorkerSelection(names: unique(typed), unmatched: []) }
        let known = try await client.list().map(\.name).sorted()
        var names: [String] = []
        var unmatched: [String] = []
        for text in typed {
            guard isPattern(text) else {
                names.append(text)
                continue
            }
            let matches = known.filter { fnmatch(text, $0, 0) == 0 }
            if matches.isEmpty { unmatched.append(text) } else { names += matches }
        }
        return WorkerSelection(names: unique(names), unmatched: unmatched)
    }

    private static func unique(_ names: [String]) -> [String] {
        var seen = Set<String>()
        return names.filter { seen.insert($0).inserted }
    }

    static func noMatch(_ pattern: String) -> CommandFailure {
        CommandFailure(message: "no worker matches '\(pattern)'", status: Exit.noSuchWorker)
    }

    /// Says every failure but the first on standard error, each with its worker; throws the
    /// first, which sets the exit status and is said last (as for one name).
    static func report(_ failures: [(String, any Error)]) throws {
        guard let (_, first) = failures.first else { return }
        for (name, error) in failures.dropFirst() {
            let text = (error as? CommandFailure)?.message ?? Session.text(of: error, bus: nil)
            writeLine("bgworkerctl: \(name): \(text)", to: STDERR_FILENO)
        }
        throw first
    }
}

/// Worker names for shell completion, asked of the daemon: at most half a second in all, and
/// nothing (no message) when there is no bus or no daemon, so a shell never hangs or prints.
enum WorkerNames {
    static let completion = CompletionKind.custom { words, _, prefix in await names(words: words, prefix: prefix) }

    static func names(words: [String], prefix: String) async -> [String] {
        // The bus the command line names, else BGWORKER_BUS, else the system bus.
        let typed = Array(zip(words, words.dropFirst())).last { $0.0 == "--bus" }.flatMap { BusOption(argument: $0.1) }
        guard let bus = try? BusOption.resolve(typed, environment: "BGWORKER_BUS") else { return [] }
        let connection: DBusConnection
        do { connection = try await DBusConnection.connect(bus.address, timeout: .milliseconds(250)) } catch { return [] }
        defer { connection.close() }
        let client = ServiceClient(connection: connection, timeout: .milliseconds(250))
        guard let workers = try? await client.list() else { return [] }
        return workers.map(\.name).filter { $0.hasPrefix(prefix) }.sorted()
    }
}
