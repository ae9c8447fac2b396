import BgWorkerAPI
import DBus
import Synchronization

/// What the follower tells the rest of the worker about its bus connection (its readiness).
protocol FollowerEvents: Sendable {
    /// Connected, and following: the match rules are in place.
    func busWorks()
    /// A connection attempt failed or the connection in use ended; `reason` is for people.
    func busFails(_ reason: String)
}

/// Follows the log level the daemon gives this worker over the bus for as long as the worker
/// runs: its own object's `EffectiveLogLevel` (the worker's own level, else the manager's) when
/// bgworkerd said where that object is (`BGWORKER_OBJECT_PATH`), else the manager's `LogLevel`.
///
/// The pattern every long-lived bus client needs: a libdbus connection that has failed stays
/// failed (there is no reconnect on it), so when it ends, drop it and open a new one, after a
/// delay that doubles up to a cap (plus a little jitter, so that a bus restart does not see
/// every worker at the same instant). Meanwhile the worker's own work goes on untouched.
final class DaemonFollower: Sendable {
    static let service = BgWorkerBus.busName
    static let managerPath = try! ObjectPath(BgWorkerBus.managerPath)

    /// Which property of which object gives the level.
    struct Source: Sendable {
        var path: ObjectPath
        var interface: String
        var property: String

        static let manager = Source(path: DaemonFollower.managerPath, interface: BgWorkerBus.managerInterface,
                                   property: BgWorkerBus.ManagerProperty.logLevel)

        /// The worker's own object; nil when `path` is not an object path.
        static func worker(at path: String) -> Source? {
            guard let objectPath = try? ObjectPath(path) else { return nil }
            return Source(path: objectPath, interface: BgWorkerBus.workerInterface, property: BgWorkerBus.WorkerProperty.effectiveLogLevel)
        }
    }

    private let bus: BusAddress
    private let source: Source
    private let log: WorkerLog
    private let backoff: Backoff
    private let events: (any FollowerEvents)?
    /// The connection in use, so that `stop()` can end it from another thread; nil and
    /// `stopped` once stopped.
    private let current = Mutex<(connection: DBusConnection?, stopped: Bool)>((nil, false))

    init(bus: BusAddress, log: WorkerLog, source: Source = .manager, backoff: Backoff = Backoff(),
         events: (any FollowerEvents)? = nil) {
        self.bus = bus
        self.source = source
        self.log = log
        self.backoff = backoff
        self.events = events
    }

    /// Connects, follows, reconnects; returns only when the task is cancelled or `stop()` was called.
    func run() async {
        var failures = 0
        while !Task.isCancelled {
            if failures > 0 {
                let delay = backoff.delay(afterFailures: failures)
                log.debug("reconnecting to the bus in \(Int(delay / .milliseconds(1))) ms")
                do { try await Task.sleep(for: delay) } catch { return }
            }
            let connection: DBusConnection
            do {
                connection = try await DBusConnection.connect(bus, timeout: .seconds(10))
            } catch {
                // Said once per outage at warning level; every further attempt at debug.
                log.log(failures == 0 ? .warning : .debug, "cannot connect to the bus: \(error)")
                events?.busFails("cannot connect to the bus: \(error)")
                failures += 1
                continue
            }
            let stopped = current.withLock { current in
                if !current.stopped { current.connection = connection }
                return current.stopped
            }
            if stopped {
                connection.close()
                return
            }
            log.info("connected to the bus as \(connection.uniqueName ?? "?")")
            let lasted = await follow(on: connection)
            connection.close()
            let stoppedMeanwhile = current.withLock { current in
                current.connection = nil
                return current.stopped
            }
            if stoppedMeanwhile || Task.isCancelled { return }
            log.warning("lost the bus connection; opening a new one")
            events?.busFails("reconnecting")
            // A connection that lasted resets the delay; one that fails at once keeps doubling it.
            failures = lasted >= backoff.stableAfter ? 1 : failures + 1
        }
    }

    /// Stops following (at shutdown): the connection in use is closed at once, and no new one
    /// is opened.
    func stop() {
        let connection = current.withLock { current -> DBusConnection? in
            current.stopped = true
            return current.connection
        }
        connection?.close()
    }

    /// Follows the daemon on one connection until it ends; returns how long that was.
    private func follow(on connection: DBusConnection) async -> Duration {
        let started = ContinuousClock.now
        let watch: NameOwnerWatch
        do {
            // Only the current owner of the name is believed; a PropertiesChanged that another
            // connection sends with the same path and interface is reported, and ignored.
            watch = try await connection.watchNameOwner(Self.service, signals: [
                MatchRule(path: source.path, interface: "org.freedesktop.DBus.Properties",
                          member: "PropertiesChanged", arguments: [0: source.interface]),
            ], reportingOthers: true)
        } catch {
            log.warning("cannot follow \(Self.service): \(error)")
            return ContinuousClock.now - started
        }
        events?.busWorks()
        // Subscribed first, read second: no change between the two is lost, and the reply
        // comes in message order among the owner's signals, so neither can undo the other.
        if watch.initialOwner != nil {
            readLevel(through: watch)
        } else {
            log.info("\(Self.service) is not on the bus; log level stays \(log.level.name)")
        }
        // Ends when the connection ends (or the task is cancelled).
        for await event in watch {
            switch event {
            case .ownerChanged(_, _?):
                readLevel(through: watch)
            case .ownerChanged(_, nil):
                log.info("\(Self.service) left the bus; log level stays \(log.level.name)")
            case .signal(let signal):
                apply(signal, watch: watch)
            case .ignoredSignal(let signal, let owner):
                log.warning("ignored a PropertiesChanged from \(signal.sender), which does not own \(Self.service) (owner: \(owner ?? "none"))")
            case .ownerReply(let reply):
                switch reply.result {
                case .success(let values):
                    setLevel(values.first?.unwrappingVariant.stringValue, from: reply.owner ?? "?")
                    log.info("following \(Self.service) at \(reply.owner ?? "?"); log level \(log.level.name)")
                case .failure(let error):
                    log.warning("cannot read \(source.property) from \(reply.owner ?? Self.service): \(error); log level stays \(log.level.name)")
                }
            }
        }
        return ContinuousClock.now - started
    }

    /// Asks the owner for the level; the answer comes as an `.ownerReply` event.
    private func readLevel(through watch: NameOwnerWatch) {
        do {
            try watch.callOwner(path: source.path, interface: "org.freedesktop.DBus.Properties", member: "Get",
                                arguments: [.string(source.interface), .string(source.property)], timeout: .seconds(10))
        } catch {
            log.warning("cannot ask \(Self.service) for \(source.property): \(error)")
        }
    }

    /// `PropertiesChanged(s interface, a{sv} changed, as invalidated)` of the followed object.
    private func apply(_ signal: DBusSignal, watch: NameOwnerWatch) {
        let args = signal.arguments
        guard args.count == 3 else { return }
        if let value = args[1].stringKeyedDictionary?[source.property] {
            setLevel(value.unwrappingVariant.stringValue, from: signal.sender)
        } else if args[2].stringArrayValue?.contains(source.property) == true {
            readLevel(through: watch)
        }
    }

    private func setLevel(_ name: String?, from owner: String) {
        guard let name, let level = LogLevel(name: name) else {
            log.warning("\(owner) announced an unknown log level \(name.map { "'\($0)'" } ?? "(not a string)"); keeping \(log.level.name)")
            return
        }
        let old = log.level
        log.level = level
        if level != old { log.announce("log level \(level.name) (from \(owner), was \(old.name))") }
    }
}

/// Delays between reconnection attempts: `initial`, doubled per failure up to `maximum`, plus
/// up to a quarter more at random.
struct Backoff: Sendable {
    var initial: Duration = .milliseconds(100)
    var maximum: Duration = .seconds(5)
    /// A connection that lasted this long counts as healthy: the next delay starts small again.
    var stableAfter: Duration = .seconds(10)

    func delay(afterFailures failures: Int) -> Duration {
        var delay = initial
        for _ in 1..<max(failures, 1) where delay < maximum { delay *= 2 }
        delay = min(delay, maximum)
        return delay + delay * Double.random(in: 0..<0.25)
    }
}
