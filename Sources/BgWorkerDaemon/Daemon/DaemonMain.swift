// Wiring: configuration, runner, supervisor, the bus connection (and its reconnection), signals,
// sd_notify. The executable `bgworkerd` only parses its arguments and calls `DaemonMain.run`.
import BgWorkerAPI
import BgWorkerCore
import DBus
import Glibc
import Logging
import ServiceLifecycle

/// What the command line says.
public struct DaemonOptions: Sendable {
    public var configPath: String
    public var bus: BusAddress
    /// nil: `[daemon] runner` of the configuration decides (default `auto`).
    public var runner: RunnerKind?
    /// The runtime folder: `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else `/run/bgworker`.
    public var runtimeDirectory: String

    public init(configPath: String, bus: BusAddress, runner: RunnerKind?, runtimeDirectory: String) {
        self.configPath = configPath
        self.bus = bus
        self.runner = runner
        self.runtimeDirectory = runtimeDirectory
    }
}

/// A reason the daemon could not start.
public struct DaemonStartError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

public enum DaemonMain {
    /// SIGHUP reloads; SIGTERM and SIGINT stop the daemon. The caller blocks them in `main`
    /// before any thread starts (`ProcessSignals.block(DaemonMain.blockedSignals)`).
    public static let daemonSignals = [SIGHUP, SIGTERM, SIGINT]
    /// What `main` blocks before any thread starts: the daemon's signals, and SIGCHLD, which the
    /// process runner reads from a signalfd of its own to reap the orphans it adopts as a child
    /// subreaper (`ProcessRunner.init(adoptOrphans:)`).
    public static let blockedSignals = daemonSignals + [SIGCHLD]

    /// The default system bus socket: workers need no `DBUS_SYSTEM_BUS_ADDRESS` for it.
    static let defaultSystemBusAddress = "unix:path=/run/dbus/system_bus_socket"

    /// Runs the daemon until SIGTERM or SIGINT and returns the exit status: 0 after a clean
    /// stop, 1 when it cannot start (each problem is printed on stderr).
    public static func run(_ options: DaemonOptions, logLevel: LogLevelControl, logger: Logger) async -> Int32 {
        let loader = ConfigurationLoader(mainPath: options.configPath)
        let files = FileLimit.raiseSoftToHard()
        logger.info("RLIMIT_NOFILE \(files.soft) (hard \(files.hard)): room for about \(files.soft) workers of the process runner at 1 fd each (its output pipe)")
        // The daemon's one event loop: the supervisor, the runner, timers and signals live on it.
        let loop: EventLoop
        do {
            loop = try EventLoop.makeShared(name: "bgw-loop")
        } catch {
            printErrors(["cannot start the event loop: \(error)"])
            return 1
        }
        let configuration: Configuration
        let runnerChoice: RunnerChoice
        switch loader.load(validatingFor: .auto) {
        case .failure(let errors):
            printErrors(["invalid configuration:"] + errors.errors.map(\.description))
            return 1
        case .success(let loaded):
            do {
                runnerChoice = try await chooseRunner(options.runner ?? loaded.daemon.runner, daemonBus: options.bus, loop: loop)
            } catch {
                printErrors([error.description])
                return 1
            }
            logger.notice("runner: \(runnerChoice.kind.rawValue) (\(runnerChoice.reason))")
            let problems = loaded.validate(for: runnerChoice.kind)
            guard problems.isEmpty else {
                printErrors(["invalid configuration for the \(runnerChoice.kind.rawValue) runner:"] + problems.map(\.description))
                await runnerChoice.discard()
                return 1
            }
            configuration = loaded
        }
        let runnerKind = runnerChoice.kind
        if let level = Logger.Level(rawValue: configuration.daemon.logLevel.rawValue) { logLevel.level = level }

        let busAddress: String
        do {
            busAddress = try options.bus.resolve()
        } catch {
            printErrors(["cannot use the bus: \(error)"])
            await runnerChoice.discard()
            return 1
        }
        let runner: any WorkerRunner
        do {
            runner = try makeRunner(runnerChoice, runtimeDirectory: options.runtimeDirectory, loop: loop)
        } catch {
            printErrors([error.description])
            return 1
        }
        // What a dead daemon left and this one killed: an operator must be able to tell.
        if let processRunner = runner as? ProcessRunner, !processRunner.killedLeftoverGroups.isEmpty {
            let groups = processRunner.killedLeftoverGroups.map(String.init).joined(separator: ", ")
            logger.warning("killed what a previous daemon's workers left behind: process groups \(groups) (SIGKILL)")
        }
        let settings = SupervisorSettings(
            loader: loader, runnerKind: runnerKind,
            busAddressForWorkers: busAddress == defaultSystemBusAddress ? nil : busAddress, version: bgworkerVersion,
            inhibitorDirectory: options.runtimeDirectory + "/inhibitors")
        let supervisor: Supervisor
        do {
            supervisor = try Supervisor(
                configuration: configuration, runner: runner, settings: settings,
                logger: Logger(label: "bgworkerd.supervisor"), logLevel: logLevel)
            try await supervisor.prepare()
        } catch {
            printErrors(["cannot set up the supervisor or its bus objects: \(error)"])
            await runner.shutdown()
            return 1
        }

        let signals: ProcessSignals
        do {
            signals = try ProcessSignals(daemonSignals, loop: loop)
        } catch {
            printErrors(["cannot receive signals: \(error)"])
            await runner.shutdown()
            return 1
        }
        let (hangups, hangupSink) = AsyncStream.makeStream(of: Void.self)
        let service = DaemonService(supervisor: supervisor, busAddress: busAddress, hangups: hangups, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let watchdog = WatchdogService() { services.append(.init(service: watchdog)) }
        services.append(.init(service: service))
        // No signals for the group itself: ours come from the signalfd (see ProcessSignals).
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [], logger: logger))
        let signalTask = Task {
            for await signal in signals.received {
                if signal == SIGHUP {
                    hangupSink.yield()
                } else {
                    await group.triggerGracefulShutdown()
                }
            }
        }
        defer { signalTask.cancel() }
        do {
            try await group.run()
            logger.notice("bgworkerd stopped")
            return 0
        } catch {
            printErrors(["\(error)"])
            await supervisor.shutdown()
            return 1
        }
    }

    public static func printErrors(_ lines: [String]) {
        for line in lines {
            let bytes = Array("bgworkerd: \(line)\n".utf8)
            _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        }
    }
}

/// The daemon as a swift-service-lifecycle service: connects, exports, takes the bus name, starts
/// the workers, says READY=1; then reloads on SIGHUP and follows its bus connection until the
/// group's graceful shutdown (SIGTERM/SIGINT), when it stops every worker and returns.
struct DaemonService: Service {
    let supervisor: Supervisor
    let busAddress: String
    /// One element per SIGHUP, from the moment the daemon started (a SIGHUP during the start
    /// reloads once the daemon is up, instead of killing it).
    let hangups: AsyncStream<Void>
    let logger: Logger
    let notifier = ServiceNotifier()

    func run() async throws {
        let (shutdownRequests, shutdownRequested) = AsyncStream.makeStream(of: Void.self)
        try await withGracefulShutdownHandler {
            try await serve(until: shutdownRequests)
        } onGracefulShutdown: {
            shutdownRequested.yield()
        }
    }

    private func serve(until shutdownRequests: AsyncStream<Void>) async throws {
        let connection: DBusConnection
        do {
            connection = try await DBusConnection.connect(.address(busAddress))
        } catch {
            throw DaemonStartError("cannot connect to the bus \(busAddress): \(error)")
        }
        // Objects and adopted workers first, then the name: whoever sees the name sees every
        // worker with its state. Nothing is started or stopped before the name is ours.
        await supervisor.attach(connection)
        await supervisor.adopt()
        let reply: RequestNameReply
        do {
            reply = try await connection.requestName(BgWorkerBus.busName, flags: [.doNotQueue])
        } catch {
            throw DaemonStartError("cannot request the bus name \(BgWorkerBus.busName): \(error)")
        }
        guard reply == .primaryOwner || reply == .alreadyOwner else {
            throw DaemonStartError("the bus name \(BgWorkerBus.busName) is owned by another process (is bgworkerd running already?)")
        }
        await supervisor.start()
        let status = await supervisor.statusText()
        notifier.ready(status: status)
        logger.notice("bgworkerd \(bgworkerVersion) ready on \(busAddress): \(status)")

        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await BusLink(supervisor: supervisor, address: busAddress, logger: logger).follow(connection)
            }
            group.addTask {
                for await _ in hangups {
                    await supervisor.reloadFromSignal()
                }
            }
            for await _ in shutdownRequests { break }
            notifier.stopping(status: "stopping: \(await supervisor.statusText())")
            await supervisor.shutdown()
            group.cancelAll()
        }
        connection.close()
    }
}

/// Keeps the daemon on the bus: when its connection ends (the bus daemon was restarted), it
/// connects again with a capped backoff (50 ms doubling to 2 s, each wait a timer), exports the
/// objects again, takes the name again and restarts the HA source on the new connection.
/// Workers are not touched by any of this (with HA, the role is `unknown` meanwhile).
struct BusLink: Sendable {
    let supervisor: Supervisor
    let address: String
    let logger: Logger
    static let firstDelay = Duration.milliseconds(50)
    static let maximumDelay = Duration.seconds(2)

    func follow(_ first: DBusConnection) async {
        var connection = first
        while !Task.isCancelled {
            for await event in connection.events {
                if case .disconnected = event { break }
            }
            guard !Task.isCancelled else { return }
            logger.warning("lost the bus connection to \(address); reconnecting")
            await supervisor.connectionLost()
            guard let next = await reconnect() else { return }
            connection = next
        }
    }

    /// Connects until it works (nil when cancelled), exports and requests the name.
    private func reconnect() async -> DBusConnection? {
        var delay = Self.firstDelay
        var attempts = 0
        while true {
            do {
                try await EventLoop.shared.sleep(for: delay)
            } catch {
                return nil
            }
            attempts += 1
            let connection: DBusConnection
            do {
                connection = try await DBusConnection.connect(.address(address), timeout: .seconds(5))
            } catch {
                if attempts == 1 || attempts % 30 == 0 {
                    logger.info("cannot reconnect to \(address) yet (\(attempts) attempts): \(error)")
                }
                delay = min(delay * 2, Self.maximumDelay)
                continue
            }
            await supervisor.attach(connection)
            do {
                // Queue for the name: if another process took it meanwhile, we get it when it goes.
                let reply = try await connection.requestName(BgWorkerBus.busName)
                if reply == .inQueue {
                    logger.error("\(BgWorkerBus.busName) is owned by another process; waiting in the queue")
                }
                logger.notice("reconnected to \(address) after \(attempts) attempts")
            } catch {
                logger.warning("cannot request \(BgWorkerBus.busName) after reconnecting: \(error)")
            }
            return connection
        }
    }
}

// ServiceLifecycle logs its services at debug level with `\(service)`: a name, not a dump of
// the struct (supervisor, stream, logger...).
extension DaemonService: CustomStringConvertible {
    var description: String { "bgworkerd on \(busAddress)" }
}

extension WatchdogService: CustomStringConvertible {
    public var description: String { "systemd watchdog" }
}
