// bgworkerd: arguments, logging, exit status. Everything else is BgWorkerDaemon's.
import ArgumentParser
import ClientSupport
import BgWorkerCore
import BgWorkerDaemon
import DBus
import Dispatch
import Glibc
import Logging

@main
enum Main {
    /// Before anything else, and before any thread exists: the daemon's signals are blocked (they
    /// are read from a signalfd) and Swift Concurrency runs on the daemon's own threads, not on
    /// libdispatch, whose pool monitor would wake an idle daemon every second (where the hooks
    /// can be taken over safely; else libdispatch, with a warning). This thread then runs the
    /// main actor's jobs.
    static func main() {
        ProcessSignals.block(DaemonMain.blockedSignals)
        let installation: TaskThreadPool.Installation
        do {
            installation = try TaskThreadPool.installAsGlobalExecutor(threads: 3)
        } catch {
            DaemonMain.printErrors(["cannot start the task threads: \(error)"])
            exit(1)
        }
        Task.detached {
            do {
                var command = try BgWorkerd.parseAsRoot()
                if let daemon = command as? BgWorkerd { try await daemon.run() } else { try command.run() }
            } catch {
                // Usage errors exit 1 (usageErrorStatus), as in every bgworker program.
                BgWorkerd.exitForError(error)
            }
            exit(0)
        }
        switch installation {
        case .installed:
            TaskThreadPool.runMainJobsOnThisThread()
        case .notInstalled(let why):
            DaemonMain.printErrors(["warning: Swift Concurrency stays on libdispatch (\(why)); the idle daemon will wake once a second"])
            dispatchMain()
        }
    }
}

struct BgWorkerd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bgworkerd",
        abstract: "Supervises background workers and publishes org.example.BgWorker on D-Bus.",
        discussion: """
            SIGHUP reloads the configuration (as the Reload method does); SIGTERM and SIGINT stop \
            every worker and exit. Workers get DBUS_SYSTEM_BUS_ADDRESS set to the daemon's bus when \
            it is not the default system bus, so that they follow it.
            """,
        version: bgworkerVersion)

    @Option(name: .long, help: "The main configuration file; drop-ins are read from its workers-directory.")
    var config = "/etc/bgworker/bgworkerd.toml"

    @Option(name: .long, help: "system, session, or a D-Bus address such as unix:path=/run/x.sock.")
    var bus = "system"

    @Option(name: .long, help: "auto, process or systemd (default: [daemon] runner, else auto).")
    var runner: String?

    func validate() throws {
        if let runner, RunnerKind(rawValue: runner) == nil {
            throw ValidationError("--runner must be auto, process or systemd, not '\(runner)'")
        }
    }

    func run() async throws {
        // A stderr whose reader went away must not kill the daemon (workers get default dispositions).
        signal(SIGPIPE, SIG_IGN)
        let level = LogLevelControl(.info)
        let writer = try LogWriter()
        LoggingSystem.bootstrap(writer.handlerFactory(level: level))
        let busAddress: BusAddress = switch bus {
        case "system": .system
        case "session": .session
        default: .address(bus)
        }
        let runtimeDirectory = ProcessInfo.runtimeDirectory
        let options = DaemonOptions(
            configPath: config, bus: busAddress, runner: runner.flatMap(RunnerKind.init(rawValue:)),
            runtimeDirectory: runtimeDirectory)
        let status = await DaemonMain.run(options, logLevel: level, logger: Logger(label: "bgworkerd"))
        await writer.flush()
        if status != 0 { throw ExitCode(status) }
    }
}

enum ProcessInfo {
    /// systemd's `RuntimeDirectory=` (first entry of `$RUNTIME_DIRECTORY`), else `/run/bgworker`.
    static var runtimeDirectory: String {
        guard let value = getenv("RUNTIME_DIRECTORY").map({ String(cString: $0) }), !value.isEmpty else {
            return "/run/bgworker"
        }
        return String(value.split(separator: ":").first ?? "/run/bgworker")
    }
}

