import ArgumentParser
import BgWorkerCore
import ClientSupport
import DBus
import Glibc

struct Cat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print workers' definitions as the configuration files write them, with the file and line.",
        discussion: """
            As systemctl cat: a `# FILE:LINE` line, then the worker's table as written. The files \
            are bgworkerd's: the main file it was started with (--config on its command line, read \
            from /proc, else /etc/bgworker/bgworkerd.toml) and the drop-ins of its workers-directory, \
            read now. They show what the daemon runs unless they were edited after its last start \
            or reload (run `reload`, or compare the files' times).
            """)

    @OptionGroup var options: GlobalOptions

    @Option(help: ArgumentHelp("The main configuration file, when bgworkerd's cannot be found (another mount namespace, hidepid).",
                               valueName: "path"))
    var config: String?

    @Argument(help: WorkerSelection.namesHelp, completion: WorkerNames.completion)
    var names: [String] = []

    func validate() throws {
        try WorkerSelection.check(names, all: false, allowsAll: false)
    }

    func run() async throws {
        try await Session.run(options) { session in
            let selection = try await WorkerSelection.expand(names, all: false, client: session.client)
            var failures = selection.unmatched.map { ($0, WorkerSelection.noMatch($0) as any Error) }
            // Names the daemon does not know are its NoSuchWorker, as for every other command.
            var known: [String] = []
            for name in selection.names {
                do {
                    _ = try await session.client.workerPath(name)
                    known.append(name)
                } catch {
                    failures.append((name, error))
                }
            }
            if !known.isEmpty {
                let mainPath: String
                if let config { mainPath = config } else { mainPath = try await DaemonConfigPath.find(session.client) }
                let files = try ConfigurationFiles.read(mainPath: mainPath)
                let configuration: Configuration
                switch Configuration.parse(main: files.main, dropIns: files.dropIns) {
                case .success(let parsed): configuration = parsed
                case .failure(let errors):
                    throw CommandFailure(
                        message: "the configuration files do not parse now (a reload would be refused):\n"
                            + errors.errors.map(\.description).joined(separator: "\n"),
                        status: Exit.failure)
                }
                var blocks: [(name: String, file: String, line: Int, text: String)] = []
                for name in known {
                    guard let origin = configuration.origins[name],
                          let source = ([files.main] + files.dropIns).first(where: { $0.path == origin.file })
                    else {
                        failures.append((name, CommandFailure(
                            message: "not in \(mainPath) or its drop-ins now (removed since the daemon's last reload?)",
                            status: Exit.failure)))
                        continue
                    }
                    var text = Self.definitionText(of: name, origin: origin, in: source)
                    if let worker = configuration.worker(named: name) {
                        let defaults = Self.defaultsInForce(worker, daemon: configuration.daemon, set: Set(origin.keyLines.keys))
                        if !defaults.isEmpty { text += "\n# not set above, in force:\n" + defaults.map { "# \($0)" }.joined(separator: "\n") }
                    }
                    blocks.append((name, origin.file, origin.line, text))
                }
                session.print(
                    blocks.map { "# \($0.file):\($0.line)\n\($0.text)" }.joined(separator: "\n\n"),
                    json: .array(blocks.map {
                        .object([("name", .string($0.name)), ("file", .string($0.file)), ("line", .uint(UInt64($0.line))),
                                 ("text", .string($0.text))])
                    }))
            }
            failures.sort { a, b in (selection.names.firstIndex(of: a.0) ?? -1) < (selection.names.firstIndex(of: b.0) ?? -1) }
            try WorkerSelection.report(failures)
        }
    }

    /// The worker's lines as written: from its `[worker.NAME]` header to the next table that is
    /// not its own (`[worker.NAME.environment]` is), without trailing blank or comment lines. A
    /// worker defined by dotted keys or an inline table shows the lines of its keys.
    static func definitionText(of name: String, origin: WorkerOrigin, in file: SourceFile) -> String {
        let lines = String(decoding: file.bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard origin.line >= 1, origin.line <= lines.count else { return "" }
        let first = origin.line - 1
        guard isHeader(lines[first]) else {
            let keyLines = Set([origin.line] + origin.keyLines.values).sorted()
            return keyLines.filter { $0 >= 1 && $0 <= lines.count }.map { lines[$0 - 1] }.joined(separator: "\n")
        }
        let lastKey = (origin.keyLines.values.max() ?? origin.line) - 1
        var end = max(first, lastKey) + 1
        while end < lines.count, !(isHeader(lines[end]) && !isOwnSubTable(lines[end], of: name)) { end += 1 }
        var block = Array(lines[first..<end])
        while block.count > 1, let last = block.last?.drop(while: { $0 == " " || $0 == "\t" }), last.isEmpty || last.hasPrefix("#") {
            block.removeLast()
        }
        return block.joined(separator: "\n")
    }

    /// The keys the worker's table does not set, as `key = value` with the value in force (the
    /// default, or the daemon's where the daemon's settings decide): the effective definition.
    static func defaultsInForce(_ worker: WorkerDefinition, daemon: DaemonSettings, set: Set<String>) -> [String] {
        func seconds(_ value: Double) -> String { String(value) }  // Swift writes 1.0 and 0.25 as TOML does
        let values: [(String, String)] = [
            ("enabled", String(worker.enabled)), ("run-on", "\"\(worker.runOn.rawValue)\""),
            ("restart-delay", seconds(worker.restartDelay)), ("restart-delay-max", seconds(worker.restartDelayMax)),
            ("stable-after", seconds(worker.stableAfter)), ("start-limit-burst", String(worker.startLimitBurst)),
            ("start-limit-interval", seconds(worker.startLimitInterval)), ("stop-timeout", seconds(worker.stopTimeout)),
            ("log-level", worker.logLevel.map { "\"\($0.rawValue)\"" } ?? "(the daemon's)"),
            ("log-buffer-lines", String(worker.logBufferLines ?? daemon.logBufferLines)),
            ("run-during-maintenance", String(worker.runDuringMaintenance)), ("ready", "\"\(worker.ready.rawValue)\""),
            ("start-timeout", seconds(worker.startTimeout)), ("watchdog", seconds(worker.watchdog)),
            ("user", "(the daemon's)"), ("group", "(the daemon's)"), ("working-directory", "(the daemon's)"),
        ]
        return values.filter { !set.contains($0.0) }.map { "\($0.0) = \($0.1)" }
    }

    /// A `[table]` or `[[array]]` header line (not a line of a multi-line array, which ends in a
    /// comma or holds a quoted value only).
    static func isHeader(_ line: String) -> Bool {
        var text = Substring(line).drop { $0 == " " || $0 == "\t" }
        if let hash = text.firstIndex(of: "#"), !text[..<hash].contains("\"") { text = text[..<hash] }
        while let last = text.last, last == " " || last == "\t" || last == "\r" { text.removeLast() }
        guard text.hasPrefix("["), text.hasSuffix("]"), text.count > 2 else { return false }
        let inner = text.dropFirst().dropLast()
        guard let firstChar = inner.drop(while: { $0 == "[" || $0 == " " }).first else { return false }
        return !inner.contains(",") && (firstChar.isLetter || firstChar.isNumber || firstChar == "_" || firstChar == "-")
    }

    static func isOwnSubTable(_ line: String, of name: String) -> Bool {
        let compact = line.filter { $0 != " " && $0 != "\t" }
        return compact.hasPrefix("[worker.\(name).") || compact.hasPrefix("[worker.\"\(name)\".")
    }
}

/// bgworkerd's main configuration file: its `--config` as its command line says it, else the
/// default. The daemon's pid comes from the bus (the credentials of the name's owner).
enum DaemonConfigPath {
    static let defaultPath = "/etc/bgworker/bgworkerd.toml"

    static func find(_ client: ServiceClient) async throws -> String {
        let reply = try await client.connection.call(
            destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"), interface: "org.freedesktop.DBus",
            member: "GetConnectionUnixProcessID", arguments: [.string(Service.name)], timeout: ServiceClient.readTimeout)
        guard let pid = reply.first?.uint32Value else {
            throw CommandFailure(message: "the bus did not say bgworkerd's pid; give --config PATH", status: Exit.failure)
        }
        guard let arguments = readArguments(pid: pid) else {
            throw CommandFailure(message: "cannot read the command line of bgworkerd (pid \(pid)) from /proc; give --config PATH",
                                 status: Exit.failure)
        }
        var written: String?
        for (index, argument) in arguments.enumerated() {
            if argument == "--config", index + 1 < arguments.count { written = arguments[index + 1] }
            if argument.hasPrefix("--config=") { written = String(argument.dropFirst("--config=".count)) }
        }
        let path = written ?? defaultPath
        if path.hasPrefix("/") { return path }
        // Relative to the daemon's folder, which only its owner (or root) may read.
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/\(pid)/cwd", &buffer, buffer.count - 1)
        guard count > 0 else {
            throw CommandFailure(message: "bgworkerd (pid \(pid)) was started with --config \(path), relative to a folder "
                                     + "this user cannot read; give --config PATH", status: Exit.failure)
        }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + path
    }

    private static func readArguments(pid: UInt32) -> [String]? {
        guard let bytes = try? readFile("/proc/\(pid)/cmdline"), !bytes.isEmpty else { return nil }
        return bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }
}

/// The main file and its drop-ins (`*.toml` regular files of its workers-directory, in name order).
struct ConfigurationFiles {
    var main: SourceFile
    var dropIns: [SourceFile]

    static func read(mainPath: String) throws -> ConfigurationFiles {
        let main = SourceFile(path: mainPath, bytes: try readFile(mainPath))
        guard let written = Configuration.workersDirectory(writtenIn: main) else {
            return ConfigurationFiles(main: main, dropIns: [])
        }
        let folder = mainPath.lastIndex(of: "/").map { String(mainPath[..<$0]) } ?? "."
        let directory = written.hasPrefix("/") ? written : (folder.isEmpty ? "" : folder) + "/" + written
        var matches = glob_t()
        defer { globfree(&matches) }
        // glob sorts bytewise in the C locale (this program sets none) and skips dot files, as
        // the daemon's listing.
        guard glob(directory + "/*.toml", 0, nil, &matches) == 0 else { return ConfigurationFiles(main: main, dropIns: []) }
        var dropIns: [SourceFile] = []
        for index in 0..<Int(matches.gl_pathc) {
            guard let raw = matches.gl_pathv[index] else { continue }
            let path = String(cString: raw)
            var info = stat()
            guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
            dropIns.append(SourceFile(path: path, bytes: try readFile(path)))
        }
        return ConfigurationFiles(main: main, dropIns: dropIns)
    }
}

/// A whole file; a failure names the file and the system's reason.
func readFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw CommandFailure(message: "cannot read \(path): \(String(cString: strerror(errno)))", status: Exit.failure) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count < 0 { throw CommandFailure(message: "cannot read \(path): \(String(cString: strerror(errno)))", status: Exit.failure) }
        if count == 0 { return bytes }
        bytes += chunk[0..<count]
    }
}
