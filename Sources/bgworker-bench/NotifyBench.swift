// `notify` (issue 11): the notify protocol served by bgworkerd (process runner).
//
// - READY=1 sent -> WorkerStateChanged running received, against a floor of the same datagram
//   read by a relay process that emits one bus signal per datagram (`notify-relay`).
// - watchdog deadline -> SIGABRT received by the worker (how late past the deadline).
// - N workers that send READY=1 at once: all running, against N workers of the same program
//   that do not speak the protocol.
//
// The workers are one small C program (`notifyWorkerSource`), compiled at the start with the
// Swift toolchain's clang, so that a worker's own start costs the same in both halves of a
// figure and little against the daemon's work.
import ArgumentParser
import BgWorkerAPI
import DBus
import Foundation
import Glibc
import SystemSupport
import TestSupport

struct NotifyBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notify",
        abstract: "bgworkerd (process runner): READY=1 to running, the watchdog's lateness, 1,000 notify workers starting.")

    @OptionGroup var common: CommonOptions

    @Option(help: "READY=1 round trips, and watchdog expiries.")
    var rounds = 200
    @Option(help: "Workers that start at once (the third figure).")
    var workers = 1000

    func run() async throws {
        try await common.emit([try await Self.measure(rounds: rounds, workers: workers)])
    }

    static func measure(rounds: Int = 200, workers: Int = 1000) async throws -> Section {
        var section = Section("notify: the sd_notify protocol served by bgworkerd, process runner (issue 11)")
        let directory = try Interrupt.directory(prefix: "bgw-bench-notify")
        defer { directory.remove() }
        let program = try compileWorker(in: directory)
        try await readyFigures(program, directory, rounds: rounds, into: &section)
        try await watchdogFigures(program, directory, rounds: max(rounds / 4, 20), into: &section)
        try await floodFigures(program, into: &section)
        try await startFigures(program, count: workers, into: &section)
        section.notes.append("workers: a C program, statically linked (clock_gettime, sendto on NOTIFY_SOCKET); in the third figure both halves run it, and only the notify half must run it up to its sendto before it counts as running; READY=1 rounds alternate with RELOADING=1 (running -> starting) on one worker, and each round starts with a Peer.Ping answered by the daemon (the relay, for the floor), so that neither is still sending what the last round caused; the floor's relay is a Swift process with our DBus module: recv() on a datagram socket, then one emitted signal per datagram")
        return section
    }

    // MARK: READY=1 -> running

    static func readyFigures(_ program: String, _ directory: TemporaryDirectory, rounds: Int, into section: inout Section) async throws {
        progress("notify: READY=1 -> running, \(rounds) rounds (and the relay floor)")
        let trigger = directory.file("trigger"), results = directory.file("results")
        for fifo in [trigger, results] { guard mkfifo(fifo, 0o600) == 0 else { throw BenchError("mkfifo \(fifo): \(errno)") } }
        // Read-write: opening never blocks, and a worker's exit is no end of file.
        let triggerFD = open(trigger, O_RDWR | O_CLOEXEC), resultsFD = open(results, O_RDWR | O_CLOEXEC)
        defer { close(triggerFD); close(resultsFD) }

        // The daemon.
        let d = try await BenchDaemon.start("""
            [worker.cycle]
            exec = ["\(program)", "cycle", "\(trigger)", "\(results)"]
            ready = "notify"
            start-timeout = 0

            """)
        let daemon: Samples
        do {
            _ = try await d.waitForState("cycle", "starting", from: 0, timeout: .seconds(30))
            // One deadline for all rounds, and each trigger written once its wait is in place:
            // between a trigger and its signal the bench does nothing (see `SignalLog.next`).
            daemon = try await withDeadline(roundsDeadline(rounds), orThrow: {
                BenchError("timed out after \(roundsDeadline(rounds)) waiting for \(rounds) READY=1 rounds")
            }) {
                var daemon = Samples()
                for round in 0..<rounds {
                    // Each round starts with the daemon idle, as the floor's relay is: a Ping it
                    // answers after what it queued for the last transition (its PropertiesChanged).
                    try await ping(d.client, Manager.name)
                    let at = try await d.waitForState("cycle", "running") { try writeByte(triggerFD, "R") }
                    // The send time is read after the signal: reading it meanwhile would busy the
                    // bench's own threads just while the signal travels.
                    let sent = try await readUInt64s(resultsFD, count: 1)[0]
                    daemon.addInterval(from: sent, to: at)
                    _ = try await d.waitForState("cycle", "starting") { try writeByte(triggerFD, "L") }
                    if round % 50 == 49 { progress("notify: \(round + 1) READY=1 rounds") }
                }
                return daemon
            }
        } catch {
            await d.stop()
            throw error
        }
        await d.stop()

        // The floor: the same worker, the same datagram, read by the relay, which emits a signal.
        // A folder of its own: stopping the bus removes the folder it was given.
        let busDirectory = try Interrupt.directory(prefix: "bgw-bench-relay")
        let bus = try await PrivateBus(directory: busDirectory)
        let socketPath = directory.file("relay.sock")
        let signals = try await SignalLog(address: bus.unixAddress, MatchRule(interface: NotifyRelay.interface))
        let relay = try ChildProcess(
            [CommandLine.arguments[0], "notify-relay", "--bus", bus.unixAddress, "--socket", socketPath],
            captureStdout: false, captureStderr: false, logFile: directory.file("relay.log"))
        let floor: Samples
        do {
            let listening = try await signals.next(from: 0, timeout: .seconds(30), "the relay's Listening") { $0.member == "Listening" }
            let pinger = try await DBusConnection.connect(.address(bus.unixAddress))
            defer { pinger.close() }
            let worker = try ChildProcess([program, "cycle", trigger, results], extraEnvironment: ["NOTIFY_SOCKET": socketPath],
                                          captureStdout: false, captureStderr: false)
            let relay = listening.signal.sender
            floor = try await withDeadline(roundsDeadline(rounds), orThrow: {
                BenchError("timed out after \(roundsDeadline(rounds)) waiting for \(rounds) relay rounds")
            }) {
                var floor = Samples()
                for _ in 0..<rounds {
                    try await ping(pinger, relay)
                    let entry = try await signals.next(from: signals.nextIndex, "the relay's signal",
                                                       triggeredBy: { try writeByte(triggerFD, "R") }) { $0.member == "Received" }
                    let sent = try await readUInt64s(resultsFD, count: 1)[0]
                    floor.addInterval(from: sent, to: entry.at)
                    _ = try await signals.next(from: signals.nextIndex, "the relay's signal",
                                               triggeredBy: { try writeByte(triggerFD, "L") }) { $0.member == "Received" }
                }
                return floor
            }
            await worker.terminate(grace: .seconds(2))
        } catch {
            await relay.terminate(grace: .seconds(2))
            await bus.stop()
            throw error
        }
        await relay.terminate(grace: .seconds(2))
        await bus.stop()
        section.figures.append(Figure("READY=1 sent -> WorkerStateChanged running", daemon,
                                      baseline: ("a datagram -> relay -> one bus signal", floor.p50), aim: "<= 1.5x"))
        section.figures.append(Figure("  floor: a datagram -> relay -> one bus signal", floor))
    }

    /// A bound for `rounds` READY=1 rounds: 30 s, and 50 ms a round beyond that.
    static func roundsDeadline(_ rounds: Int) -> Duration { .seconds(30) + .milliseconds(50 * rounds) }

    /// One `Peer.Ping` round trip to `destination`: it answers once it has sent what it
    /// queued before.
    static func ping(_ connection: DBusConnection, _ destination: String) async throws {
        _ = try await connection.call(destination: destination, path: try ObjectPath("/"), interface: "org.freedesktop.DBus.Peer",
                                      member: "Ping", arguments: [])
    }

    // MARK: the watchdog's lateness

    static func watchdogFigures(_ program: String, _ directory: TemporaryDirectory, rounds: Int, into section: inout Section) async throws {
        progress("notify: watchdog deadline -> SIGABRT, \(rounds) expiries")
        let results = directory.file("watchdog-results")
        guard mkfifo(results, 0o600) == 0 else { throw BenchError("mkfifo \(results): \(errno)") }
        let resultsFD = open(results, O_RDWR | O_CLOEXEC)
        defer { close(resultsFD) }
        let interval = 0.05
        let d = try await BenchDaemon.start("""
            [worker.hang]
            exec = ["\(program)", "watchdog", "-", "\(results)"]
            watchdog = \(interval)
            restart-delay = 0
            start-limit-burst = 0

            """)
        var late = Samples()
        do {
            for _ in 0..<rounds {
                let pair = try await readUInt64s(resultsFD, count: 2)
                let deadline = pair[0] &+ UInt64(interval * 1e9)
                late.add(Double(Int64(bitPattern: pair[1] &- deadline)) / 1_000_000)
            }
        } catch {
            await d.stop()
            throw error
        }
        await d.stop()
        section.figures.append(Figure("watchdog deadline -> SIGABRT received", late, aim: "p50 < 1 ms, p99 < 5 ms",
                                      note: "the deadline is the worker's WATCHDOG=1 send time + \(interval) s (the daemon's is later by the datagram's trip: this overstates)"))
    }

    // MARK: the bus during a flood

    static func floodFigures(_ program: String, into section: inout Section) async throws {
        progress("notify: GetAll during a flood of 100,000 datagrams")
        let d = try await BenchDaemon.start("""
            [worker.flood]
            exec = ["\(program)", "flood"]
            ready = "notify"

            """)
        let path = try ObjectPath(BgWorkerBus.workerPathPrefix + "flood")
        func getAll() async throws -> UInt64 {
            let t0 = monotonicNanoseconds()
            _ = try await d.client.call(destination: BgWorkerBus.busName, path: path, interface: "org.freedesktop.DBus.Properties",
                                        member: "GetAll", arguments: [.string(BgWorkerBus.workerInterface)])
            return monotonicNanoseconds() &- t0
        }
        func statusText() async throws -> String {
            let reply = try await d.client.call(destination: BgWorkerBus.busName, path: path, interface: "org.freedesktop.DBus.Properties",
                                                member: "Get", arguments: [.string(BgWorkerBus.workerInterface), .string("StatusText")])
            if case .variant(let value)? = reply.first { return value.stringValue ?? "" }
            return ""
        }
        var during = Samples(), idle = Samples()
        do {
            let deadline = monotonicNanoseconds() + 120_000_000_000
            var calls = 0
            while monotonicNanoseconds() < deadline {
                during.add(Double(try await getAll()) / 1e6)
                calls += 1
                if calls % 10 == 0, try await statusText() == "done" { break }
            }
            for _ in 0..<200 { idle.add(Double(try await getAll()) / 1e6) }
        } catch {
            await d.stop()
            throw error
        }
        await d.stop()
        section.figures.append(Figure("GetAll of the flooding worker, during 100,000 STATUS= datagrams", during,
                                      baseline: ("GetAll of the same worker, idle", idle.p50), aim: "p99 < 50 ms"))
        section.figures.append(Figure("  GetAll of the same worker, idle", idle))
    }

    // MARK: N notify workers at once

    static func startFigures(_ program: String, count: Int, into section: inout Section) async throws {
        var notify = Samples(), plain = Samples()
        for round in 0..<3 {
            for kind in round % 2 == 0 ? ["notify", "plain"] : ["plain", "notify"] {
                progress("notify: \(count) \(kind) workers starting (round \(round + 1) of 3)")
                let extra = kind == "notify" ? "ready = \"notify\"\nstart-timeout = 0" : ""
                let d = try await BenchDaemon.start(
                    workerTables(count, prefix: "w", argv: [program, kind == "notify" ? "ready" : "idle"], extra: extra),
                    timeout: .seconds(300))
                do {
                    let last = try await d.waitForRunning(count: count, prefix: "w", from: 0, timeout: .seconds(300))
                    if kind == "notify" { notify.addInterval(from: d.spawnedAt, to: last) } else { plain.addInterval(from: d.spawnedAt, to: last) }
                } catch {
                    await d.stop()
                    throw error
                }
                await d.stop()
            }
        }
        section.figures.append(Figure("\(count) notify workers (READY=1 at once) -> all running", notify,
                                      baseline: ("\(count) exec workers -> all running", plain.p50), aim: "<= 1.5x"))
        section.figures.append(Figure("  \(count) exec workers of the same program -> all running", plain))
    }

    // MARK: helpers

    static func writeByte(_ fd: Int32, _ byte: Character) throws {
        var value = byte.asciiValue!
        guard write(fd, &value, 1) == 1 else { throw BenchError("write to a fifo: \(errno)") }
    }

    /// `count` native UInt64s from the fifo, read on a thread of its own (a blocking read holds
    /// no thread of Swift's pool); fails after 30 s.
    static func readUInt64s(_ fd: Int32, count: Int) async throws -> [UInt64] {
        try await withCheckedThrowingContinuation { continuation in
            do {
                try startDedicatedThread(name: "bgw-bench-fifo") {
                    var values = [UInt64](repeating: 0, count: count)
                    let wanted = count * 8
                    var got = 0
                    let deadline = monotonicNanoseconds() + 30_000_000_000
                    while got < wanted {
                        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                        let left = Int64(bitPattern: deadline &- monotonicNanoseconds()) / 1_000_000
                        guard left > 0, poll(&pfd, 1, Int32(left)) == 1 else {
                            return continuation.resume(throwing: BenchError("no result from the worker within 30 s"))
                        }
                        let n = values.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, wanted - got) }
                        guard n > 0 else { return continuation.resume(throwing: BenchError("read from a fifo: \(errno)")) }
                        got += n
                    }
                    continuation.resume(returning: values)
                }
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Compiles the worker with the Swift toolchain's clang (it is there wherever we build).
    static func compileWorker(in directory: TemporaryDirectory) throws -> String {
        let source = directory.file("notify-worker.c"), binary = directory.file("notify-worker")
        try notifyWorkerSource.write(toFile: source, atomically: true, encoding: .utf8)
        let candidates = [ProcessInfo.processInfo.environment["CC"], "/opt/swift/usr/bin/clang", "/usr/bin/clang", "/usr/bin/cc"]
        guard let compiler = candidates.compactMap({ $0 }).first(where: { access($0, X_OK) == 0 }) else {
            throw BenchError("no C compiler (set CC)")
        }
        // Static: no dynamic loader at each start, so that a worker's own start (which a notify
        // worker must finish before READY=1, and an exec worker need not) costs little.
        var status = runBlocking([compiler, "-O2", "-static", "-o", binary, source])
        if status != 0 { status = runBlocking([compiler, "-O2", "-o", binary, source]) }
        guard status == 0 else { throw BenchError("\(compiler) failed on \(source) (status \(status))") }
        return binary
    }

    static let notifyWorkerSource = #"""
        #define _GNU_SOURCE
        #include <fcntl.h>
        #include <stdio.h>
        #include <signal.h>
        #include <stddef.h>
        #include <stdint.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/socket.h>
        #include <sys/un.h>
        #include <time.h>
        #include <unistd.h>

        static int sock = -1;
        static struct sockaddr_un addr;
        static socklen_t addr_len;

        static uint64_t now(void) {
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
        }

        static void open_notify(void) {
            const char *path = getenv("NOTIFY_SOCKET");
            if (!path || strlen(path) >= sizeof addr.sun_path) exit(2);
            sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            memset(&addr, 0, sizeof addr);
            addr.sun_family = AF_UNIX;
            memcpy(addr.sun_path, path, strlen(path));
            if (path[0] == '@') addr.sun_path[0] = 0;
            addr_len = offsetof(struct sockaddr_un, sun_path) + strlen(path);
        }

        static void send_message(const char *text) {
            sendto(sock, text, strlen(text), 0, (struct sockaddr *)&addr, addr_len);
        }

        // notify-worker idle | ready | flood | cycle TRIGGER RESULTS | watchdog - RESULTS
        int main(int argc, char **argv) {
            if (argc < 2) return 2;
            if (!strcmp(argv[1], "idle")) for (;;) pause();
            open_notify();
            if (!strcmp(argv[1], "ready")) {
                send_message("READY=1");
                for (;;) pause();
            }
            if (!strcmp(argv[1], "flood")) {
                // A blocking socket: a full queue makes sendto wait, as sd_notify does.
                send_message("READY=1");
                char text[64];
                for (int i = 0; i < 100000; i++) {
                    snprintf(text, sizeof text, "STATUS=flood %d", i);
                    send_message(text);
                }
                send_message("STATUS=done");
                for (;;) pause();
            }
            if (argc < 4) return 2;
            int results = open(argv[3], O_WRONLY | O_CLOEXEC);
            if (!strcmp(argv[1], "watchdog")) {
                // SIGABRT stays pending until sigwaitinfo takes it: its arrival time, exactly.
                sigset_t set;
                sigemptyset(&set);
                sigaddset(&set, SIGABRT);
                sigprocmask(SIG_BLOCK, &set, NULL);
                uint64_t times[2];
                times[0] = now();
                send_message("WATCHDOG=1");
                siginfo_t info;
                while (sigwaitinfo(&set, &info) < 0) {}
                times[1] = now();
                return write(results, times, sizeof times) == sizeof times ? 0 : 1;
            }
            int trigger = open(argv[2], O_RDONLY | O_CLOEXEC);
            char c;
            while (read(trigger, &c, 1) == 1) {
                if (c == 'R') {
                    uint64_t sent = now();
                    send_message("READY=1");
                    if (write(results, &sent, sizeof sent) != sizeof sent) return 1;
                } else if (c == 'L') {
                    send_message("RELOADING=1");
                }
            }
            return 0;
        }
        """#
}

/// The floor's relay (hidden): receives datagrams on a socket and emits one bus signal for each.
struct NotifyRelay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notify-relay", abstract: "The notify figure's floor (used by `notify`).", shouldDisplay: false)
    static let interface = "org.example.BgWorkerBench.Relay"

    @Option var bus: String
    @Option var socket: String

    func run() async throws {
        let connection = try await DBusConnection.connect(.address(bus))
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socket.utf8) + [0]
        guard bytes.count <= MemoryLayout.size(ofValue: addr.sun_path) else { throw BenchError("socket path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        unlink(socket)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, rc == 0 else { throw BenchError("relay: bind \(socket): \(errno)") }
        let path = try ObjectPath("/org/example/BgWorkerBench/Relay")
        try connection.emitSignal(path: path, interface: Self.interface, member: "Listening")
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw BenchError("relay: recv: \(errno)") }
            try connection.emitSignal(path: path, interface: Self.interface, member: "Received", arguments: [.uint32(UInt32(n))])
        }
    }
}
