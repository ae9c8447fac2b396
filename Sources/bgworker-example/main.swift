// bgworker-example: a worker for bgworkerd that shows the patterns a worker in any language
// needs. It does periodic work and logs it with sd-daemon priority prefixes, follows the
// level the daemon gives it over the bus (rebuilding its connection when the bus goes away, while the
// work goes on), and ends cleanly on SIGTERM. `--die-one-in N` makes it fail at random, like
// the NSO background-worker demo it is modelled on. `--notify` speaks systemd's notify protocol
// (readiness, status), it pings the watchdog when given one, and `--hang-after N` shows the
// watchdog catching a main loop that hangs.
import ArgumentParser
import BgWorkerCore
import ClientSupport
import DBus
import Dispatch
import Glibc

struct ExampleOptions: ParsableCommand {  // a command, so that its configuration (name, --version) is used
    static let configuration = CommandConfiguration(
        commandName: "bgworker-example",
        abstract: "An example worker: periodic work, logs, LogLevel followed over the bus.",
        discussion: """
            Reads BGWORKER_NAME and BGWORKER_LOG_LEVEL at start. Connects to the system bus \
            (DBUS_SYSTEM_BUS_ADDRESS, which bgworkerd sets for its workers when it runs on a \
            private bus) unless --bus says otherwise, and follows the EffectiveLogLevel of its \
            own object (BGWORKER_OBJECT_PATH), or the daemon's LogLevel without that variable. \
            With NOTIFY_SOCKET and WATCHDOG_USEC (WATCHDOG_PID unset or its own pid) it sends \
            WATCHDOG=1 from its main loop every half of WATCHDOG_USEC, with or without --notify. \
            Without NOTIFY_SOCKET, --notify and the watchdog do nothing.
            """,
        version: programVersion)

    @Option(help: "Seconds between two cycles of work.")
    var interval: Double = 1

    @Option(help: "Exit with status 1 (\"Bad dice value\") at random, one cycle in N (0: never).")
    var dieOneIn: Int = 0

    @Option(help: "The bus: system, session, a D-Bus address or a socket path.")
    var bus: BusOption = .system

    @Flag(help: ArgumentHelp(
        "Speak the notify protocol: READY=1 once the bus connection works, STATUS=cycle N, STOPPING=1 at SIGTERM.",
        discussion: "Until the bus works the status says why it is not ready, and the daemon's start-timeout decides."))
    var notify = false

    @Option(help: "After N cycles the main loop hangs: no more cycles, no watchdog pings, the process stays (0: never).")
    var hangAfter: Int = 0

    @Flag(help: "Print the version and exit.")
    var version = false

    func validate() throws {
        guard interval > 0, interval.isFinite else { throw ValidationError("--interval must be a positive number of seconds") }
        guard dieOneIn >= 0 else { throw ValidationError("--die-one-in must be 0 (never) or more") }
        guard hangAfter >= 0 else { throw ValidationError("--hang-after must be 0 (never) or more") }
    }
}

/// The worker's own job: one cycle per interval, on a fixed schedule, and between cycles the
/// watchdog's pings when it has one (this loop is what the watchdog vouches for, so it pings
/// from here, not from a thread of its own). Returns the exit status when the job itself ends
/// the process, nil when cancelled (between two cycles).
func work(log: WorkerLog, interval: Duration, dieOneIn: Int, hangAfter: Int, notifications: Notifications) async -> Int32? {
    let clock = ContinuousClock()
    var due = clock.now
    var nextPing = notifications.pingInterval.map { _ in clock.now }
    var cycle = 0
    while true {
        if let ping = nextPing, clock.now >= ping, let pingInterval = notifications.pingInterval {
            notifications.ping()
            // From now, not from the missed time: after a stall, one ping, not a burst.
            nextPing = clock.now + pingInterval
        }
        guard clock.now >= due else {
            do { try await Task.sleep(until: min(due, nextPing ?? due), clock: clock) } catch { return nil }
            continue
        }
        cycle += 1
        log.trace("cycle \(cycle) starting")
        log.debug("cycle \(cycle): working")
        if dieOneIn > 0 {
            let roll = Int.random(in: 1...dieOneIn)
            log.debug("cycle \(cycle): rolled \(roll) of \(dieOneIn)")
            if roll == 1 {
                log.error("Bad dice value")
                return 1
            }
        }
        log.info("cycle \(cycle): work done")
        notifications.cycleDone(cycle)
        if cycle == hangAfter {
            log.warning("cycle \(cycle): hanging (--hang-after \(hangAfter)): no more cycles, no more watchdog pings")
            // Stuck, as a deadlocked loop would be; only SIGTERM (or the watchdog's SIGABRT) ends it.
            while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            return nil
        }
        due += interval
    }
}

TerminationSignals.prepare()
let options = ExampleOptions.parseOrExitWithUsageStatus()
if options.version {
    writeLine(bgworkerVersion)
    exit(0)
}
let environment = (name: getenv("BGWORKER_NAME").map { String(cString: $0) },
                   level: getenv("BGWORKER_LOG_LEVEL").map { String(cString: $0) })
let log = WorkerLog(level: environment.level.flatMap { LogLevel(name: $0) } ?? .info)
if let raw = environment.level, LogLevel(name: raw) == nil {
    log.warning("BGWORKER_LOG_LEVEL=\(raw) is not a log level; using info")
}
log.info("\(environment.name ?? "bgworker-example") starting: every \(options.interval)s, log level \(log.level.name)")

// The work, and beside it the follower of the daemon's log level; each says when it has ended.
let objectPath = getenv("BGWORKER_OBJECT_PATH").map { String(cString: $0) }
let source = objectPath.flatMap(DaemonFollower.Source.worker(at:)) ?? .manager
if let objectPath, DaemonFollower.Source.worker(at: objectPath) == nil {
    log.warning("BGWORKER_OBJECT_PATH=\(objectPath) is not an object path; following the daemon's LogLevel")
}
let notifications = Notifications(announcing: options.notify, log: log)
if options.notify && !Notifications.socketGiven {
    log.debug("--notify without NOTIFY_SOCKET: nothing to notify")
}
let follower = DaemonFollower(bus: options.bus.address, log: log, source: source, events: notifications)
let ended = DispatchSemaphore(value: 0)
let worker = Task.detached {
    if let status = await work(log: log, interval: .seconds(options.interval), dieOneIn: options.dieOneIn,
                               hangAfter: options.hangAfter, notifications: notifications) {
        follower.stop()
        exit(status)
    }
    ended.signal()
}
let following = Task.detached {
    await follower.run()
    ended.signal()
}

// The main thread waits for SIGTERM. Between two cycles nothing is half done: stop the work,
// close the connection (the bus sees us leave at once), let both finish (briefly), exit.
let number = TerminationSignals.wait()
log.info("\(TerminationSignals.name(number)) received; stopping")
notifications.stopping()
worker.cancel()
following.cancel()
follower.stop()
let deadline = DispatchTime.now() + .milliseconds(500)
for _ in 0..<2 { _ = ended.wait(timeout: deadline) }
log.info("stopped")
exit(0)
