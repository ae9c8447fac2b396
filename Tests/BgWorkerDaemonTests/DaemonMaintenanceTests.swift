import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// Maintenance mode (`Inhibit`, `ListInhibitors`, `Maintenance`) against the real daemon (process
/// runner), with inhibitors held by python3-dbus, busctl and gdbus clients.
@Suite(.timeLimit(.minutes(3)))
struct DaemonMaintenanceTests {
    /// `held`: ignores SIGTERM in its whole group (a child too), so its stop takes its
    /// stop-timeout and ends with SIGKILL; `exempt` keeps running during maintenance.
    static let workers = shellWorker("held", "trap '' TERM; sleep 1000 & exec sleep 1000", extra: "stop-timeout = 1.0")
        + shellWorker("exempt", "exec sleep 1000", extra: "run-during-maintenance = true")
        + shellWorker("quiet", "exec sleep 1000", extra: "enabled = false")

    /// A python3-dbus client that takes inhibitors and holds them until it dies. Arguments: bus
    /// address, who, why, then `count=N` (N concurrent calls), `gone=PGID` (a process group that
    /// must be gone when the reply comes), `alive=PID` (a process that must still run then),
    /// `child` (starts `sleep` in a session of its own that inherits the fds). Prints
    /// `held N errors E stale [..] dead [..]`, then `child PID` with `child`.
    static let holder = """
        import dbus, os, signal, subprocess, sys
        address, who, why = sys.argv[1:4]
        options = sys.argv[4:]
        count = int(next((o[6:] for o in options if o.startswith("count=")), "1"))
        gone = [int(o[5:]) for o in options if o.startswith("gone=")]
        alive = [int(o[6:]) for o in options if o.startswith("alive=")]
        fds, errors = [], []
        if count == 1:
            bus = dbus.bus.BusConnection(address)
            manager = dbus.Interface(bus.get_object("\(BgWorkerBus.busName)", "\(BgWorkerBus.managerPath)"), "\(BgWorkerBus.managerInterface)")
            try:
                fd = manager.Inhibit(who, why, timeout=120)
                assert isinstance(fd, dbus.types.UnixFd)
                fds.append(fd.take())
            except dbus.exceptions.DBusException as e:
                errors.append(e.get_dbus_name())
        else:
            from dbus.mainloop.glib import DBusGMainLoop
            from gi.repository import GLib
            bus = dbus.bus.BusConnection(address, mainloop=DBusGMainLoop())
            manager = dbus.Interface(bus.get_object("\(BgWorkerBus.busName)", "\(BgWorkerBus.managerPath)"), "\(BgWorkerBus.managerInterface)")
            loop = GLib.MainLoop()
            def done():
                if len(fds) + len(errors) == count: loop.quit()
            def reply(fd):
                fds.append(fd.take()); done()
            def error(e):
                errors.append(e.get_dbus_name()); done()
            for i in range(count):
                manager.Inhibit(f"{who}-{i}", why, reply_handler=reply, error_handler=error, timeout=120)
            loop.run()
        def exists_group(pgid):
            # A live member (zombies not counted: the runner reports an exit once every member
            # has exited; an orphan's reaping is its new parent's business).
            for entry in os.listdir("/proc"):
                if not entry.isdigit(): continue
                try:
                    stat = open(f"/proc/{entry}/stat").read()
                except OSError:
                    continue
                fields = stat[stat.rindex(")") + 2:].split()
                if fields[0] != "Z" and int(fields[2]) == pgid: return True
            return False
        def exists(pid):
            try:
                os.kill(pid, 0); return True
            except ProcessLookupError:
                return False
        stale = [g for g in gone if exists_group(g)]
        dead = [p for p in alive if not exists(p)]
        print("held", len(fds), "errors", ",".join(sorted(set(errors))) or "-", "stale", stale, "dead", dead, flush=True)
        if "child" in options:
            child = subprocess.Popen(["sleep", "1000"], pass_fds=fds, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print("child", child.pid, flush=True)
        while True:
            signal.pause()
        """

    /// Starts a holder and returns it once its line came (killed at teardown).
    static func hold(_ fixture: DaemonFixture, who: String, why: String, _ options: [String] = [],
                     asUser uid: Int? = nil) async throws -> (process: ChildProcess, line: String) {
        let (process, line) = try await hold(address: fixture.bus.unixAddress, folder: fixture.directory.path, who: who, why: why,
                                             options, asUser: uid)
        fixture.atTeardown { await process.terminate(grace: .seconds(2)) }
        return (process, line)
    }

    /// The holder on the bus at `address` (its script written to `folder`); the caller stops it.
    static func hold(address: String, folder: String, who: String, why: String, _ options: [String] = [],
                     asUser uid: Int? = nil) async throws -> (process: ChildProcess, line: String) {
        let script = folder + "/holder.py"
        if !FileManager.default.fileExists(atPath: script) {
            try Self.holder.write(toFile: script, atomically: true, encoding: .utf8)
        }
        var argv = ["/usr/bin/python3", script, address, who, why] + options
        if let uid { argv = ["setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups"] + argv }
        let process = try ChildProcess(argv, captureStderr: true)
        guard let line = try await process.readLine(timeout: .seconds(60)) else {
            var stderr: [String] = []
            while let line = try await process.readErrorLine(timeout: .seconds(2)) { stderr.append(line) }
            throw TestProcessError("the holder printed nothing: \(stderr.joined(separator: "\n"))")
        }
        return (process, line)
    }

    struct InhibitorRow: Equatable, Sendable {
        var who: String, why: String, uid: UInt32, pid: UInt32, since: UInt64
    }

    static func inhibitors(_ fixture: DaemonFixture) async throws -> [InhibitorRow] {
        let reply = try await fixture.call("ListInhibitors")
        guard let rows = reply.first?.array else { throw TestProcessError("ListInhibitors answered \(reply)") }
        return try rows.map { row in
            guard let f = row.array, f.count == 5, let who = f[0].string, let why = f[1].string, let uid = f[2].uint32,
                  let pid = f[3].uint32, let since = f[4].uint64 else { throw TestProcessError("row \(row)") }
            return InhibitorRow(who: who, why: why, uid: uid, pid: pid, since: since)
        }
    }

    static func maintenance(_ fixture: DaemonFixture) async throws -> Bool? {
        try await fixture.property("Maintenance").bool
    }

    /// Waits for the `Maintenance` PropertiesChanged with `value` (the monitor must predate it).
    static func maintenanceChanged(_ monitor: BusMonitor, to value: Bool) async throws {
        _ = try await monitor.waitFor("Maintenance \(value)", timeout: .seconds(20)) { message in
            message.path == DaemonFixture.manager && DaemonStopTests.changedProperties(message)["Maintenance"]?.bool == value
        }
    }

    static func microsecondsNow() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }

    @Test func inhibitRepliesOnceTheHeldWorkersAreGoneAndExemptOnesRunOn() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let heldPid = try await fixture.worker("held").pid
            let exemptPid = try await fixture.worker("exempt").pid
            #expect(heldPid != 0 && exemptPid != 0)
            #expect(try await Self.maintenance(fixture) == false)
            let monitor = try await fixture.monitor()
            let before = Self.microsecondsNow()
            let started = ContinuousClock.now
            let (holder, line) = try await Self.hold(fixture, who: "apt", why: "upgrade", ["gone=\(heldPid)", "alive=\(exemptPid)"])
            // `held` ignores SIGTERM: the reply waited for its SIGKILL after stop-timeout.
            #expect(ContinuousClock.now - started >= .seconds(1))
            #expect(line == "held 1 errors - stale [] dead []", "the group is gone and exempt runs at the reply: \(line)")
            #expect(try await Self.maintenance(fixture) == true)
            // GetAll has it too.
            let all = try await fixture.call("GetAll", "s", [DaemonFixture.interface], interface: "org.freedesktop.DBus.Properties")
            guard case .object(let properties)? = all.first else { throw TestProcessError("GetAll answered \(all)") }
            #expect(properties["Maintenance"]?.unwrapped.bool == true, "\(properties)")

            let held = try await fixture.worker("held")
            #expect(held.state == "standby" && held.pid == 0, "\(held)")
            #expect(try await fixture.property("StateReason", worker: "held").string == "maintenance: apt: upgrade")
            let exempt = try await fixture.worker("exempt")
            #expect(exempt.state == "running" && exempt.pid == exemptPid)
            #expect(try await fixture.worker("quiet").state == "disabled")
            let rows = try await Self.inhibitors(fixture)
            #expect(rows.count == 1)
            if let row = rows.first {
                #expect(row.who == "apt" && row.why == "upgrade" && row.uid == getuid() && row.pid == UInt32(holder.pid), "\(row)")
                #expect(row.since >= before && row.since <= Self.microsecondsNow(), "\(row)")
            }
            // Maintenance's PropertiesChanged came before the worker began to stop.
            try await Self.maintenanceChanged(monitor, to: true)
            _ = try await monitor.stateChange(of: "held", to: "stopping")

            holder.signal(SIGTERM)
            try await Self.maintenanceChanged(monitor, to: false)
            let restart = try await monitor.stateChange(of: "held")
            #expect(restart.reason == "maintenance ended", "\(restart)")
            let again = try await monitor.waitUntil(fixture, worker: "held", is: "running")
            #expect(again.pid != 0 && again.pid != heldPid)
            #expect(try await Self.inhibitors(fixture).isEmpty)
            #expect(try await fixture.worker("exempt").pid == exemptPid, "exempt was never touched")
        }
    }

    @Test func twoInhibitorsClosingOneKeepsMaintenanceAndSIGKILLOfTheOtherEndsIt() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let monitor = try await fixture.monitor()
            let (alpha, _) = try await Self.hold(fixture, who: "alpha", why: "first")
            let (beta, _) = try await Self.hold(fixture, who: "beta", why: "second")
            #expect(try await Self.inhibitors(fixture).map(\.who) == ["alpha", "beta"])
            #expect(try await fixture.property("StateReason", worker: "held").string == "maintenance: alpha: first")

            alpha.signal(SIGTERM)
            _ = try await alpha.waitForExit()
            try await waitUntil("alpha's inhibitor is gone") { try await Self.inhibitors(fixture).map(\.who) == ["beta"] }
            #expect(try await Self.maintenance(fixture) == true)
            #expect(try await fixture.worker("held").state == "standby")

            beta.signal(SIGKILL)
            try await Self.maintenanceChanged(monitor, to: false)
            _ = try await monitor.waitUntil(fixture, worker: "held", is: "running")
            #expect(try await Self.inhibitors(fixture).isEmpty)
        }
    }

    @Test func anInheritedFdKeepsMaintenanceAfterItsHolderDies() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let monitor = try await fixture.monitor()
            let (holder, _) = try await Self.hold(fixture, who: "script", why: "forks", ["child"])
            let childLine = try #require(try await holder.readLine())
            let child = try #require(pid_t(childLine.split(separator: " ").last ?? ""))
            fixture.atTeardown { kill(child, SIGKILL) }
            holder.signal(SIGKILL)
            _ = try await holder.waitForExit()
            // A later inhibitor that gdbus closes at once: once it is gone, the daemon has seen
            // the closes that came before it, and the holder's inherited fd is still held.
            let gdbus = try await run(["gdbus", "call", "--address", fixture.bus.unixAddress, "--dest", DaemonFixture.busName,
                                       "--object-path", DaemonFixture.manager, "--method", "\(DaemonFixture.interface).Inhibit",
                                       "probe", "closes at once"])
            #expect(gdbus.status == 0, "\(gdbus.stderr)")
            try await waitUntil("gdbus's inhibitor is gone") { try await Self.inhibitors(fixture).map(\.who) == ["script"] }
            #expect(try await Self.maintenance(fixture) == true)
            #expect(try await fixture.worker("held").state == "standby")

            kill(child, SIGKILL)
            try await Self.maintenanceChanged(monitor, to: false)
            _ = try await monitor.waitUntil(fixture, worker: "held", is: "running")
        }
    }

    /// scripts/adversarial/maintenance.py step 9: a holder that writes into its fd without end
    /// kept the loop draining it (half a core). Now nothing reads: the pipe fills and stays full,
    /// and the holder's exit still ends the inhibitor with the bytes unread.
    @Test func aHolderWritingIntoItsFdFillsThePipeAndCostsTheLoopNothing() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let monitor = try await fixture.monitor()
            let writer = """
                import dbus, os, select, sys
                bus = dbus.bus.BusConnection(sys.argv[1])
                manager = dbus.Interface(bus.get_object("\(BgWorkerBus.busName)", "\(BgWorkerBus.managerPath)"), "\(BgWorkerBus.managerInterface)")
                fd = manager.Inhibit("writer", "writes", timeout=120).take()
                os.set_blocking(fd, False)
                total = 0
                while total < 64 << 20:
                    try: total += os.write(fd, b"x" * 65536)
                    except BlockingIOError:
                        # Full: does anybody drain it within a second?
                        if not select.select([], [fd], [], 1.0)[1]: break
                print("full" if total < 64 << 20 else "drained", total)
                """
            let r = try await run(["/usr/bin/python3", "-c", writer, fixture.bus.unixAddress])
            #expect(r.status == 0 && r.stdout.hasPrefix("full "), "\(r)")
            try await Self.maintenanceChanged(monitor, to: false)
            _ = try await monitor.waitUntil(fixture, worker: "held", is: "running")
        }
    }

    @Test func aHundredInhibitorsAtOnce() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let monitor = try await fixture.monitor()
            let heldPid = try await fixture.worker("held").pid
            let (holder, line) = try await Self.hold(fixture, who: "many", why: "at once", ["count=100", "gone=\(heldPid)"])
            #expect(line == "held 100 errors - stale [] dead []", "\(line)")
            let rows = try await Self.inhibitors(fixture)
            #expect(rows.count == 100 && Set(rows.map(\.who)).count == 100)
            #expect(rows.allSatisfy { $0.pid == UInt32(holder.pid) })
            #expect(try await Self.maintenance(fixture) == true)
            holder.signal(SIGTERM)
            try await Self.maintenanceChanged(monitor, to: false)
            _ = try await monitor.waitUntil(fixture, worker: "held", is: "running")
            #expect(try await Self.inhibitors(fixture).isEmpty)
        }
    }

    /// busctl and gdbus close the fd when they exit: maintenance begins and ends again.
    @Test func busctlAndGdbusInhibitorsEndWhenTheyExit() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let monitor = try await fixture.monitor()
            let busctl = try await fixture.busctl(["call", DaemonFixture.busName, DaemonFixture.manager, DaemonFixture.interface,
                                                   "Inhibit", "ss", "busctl", "a try"])
            #expect(busctl.status == 0 && busctl.stdout.hasPrefix("h "), "\(busctl)")
            try await Self.maintenanceChanged(monitor, to: true)
            try await Self.maintenanceChanged(monitor, to: false)
            _ = try await monitor.waitUntil(fixture, worker: "held", is: "running")
            let gdbus = try await run(["gdbus", "call", "--address", fixture.bus.unixAddress, "--dest", DaemonFixture.busName,
                                       "--object-path", DaemonFixture.manager, "--method", "\(DaemonFixture.interface).Inhibit",
                                       "gdbus", "another try"])
            #expect(gdbus.status == 0 && gdbus.stdout.contains("handle"), "\(gdbus)")
            try await Self.maintenanceChanged(monitor, to: true)
            try await Self.maintenanceChanged(monitor, to: false)
            _ = try await monitor.waitUntil(fixture, worker: "held", is: "running")
            // Too long a who: InvalidArgs, and nothing is held.
            let long = String(repeating: "w", count: 300)
            let refused = try await fixture.busctl(["call", DaemonFixture.busName, DaemonFixture.manager, DaemonFixture.interface,
                                                    "Inhibit", "ss", long, "why"])
            #expect(refused.status != 0 && refused.stderr.contains("at most 256 bytes"), "\(refused)")
            #expect(try await Self.maintenance(fixture) == false)
        }
    }

    @Test func aRoleChangeDuringMaintenanceStartsNoHeldWorker() async throws {
        let workers = "[ha]\nsource = \"pacemaker\"\n\n"
            + shellWorker("p", "exec sleep 1000", extra: "run-on = \"primary\"\nstop-timeout = 1.0")
            + shellWorker("s", "exec sleep 1000", extra: "run-on = \"secondary\"\nstop-timeout = 1.0")
        try await DaemonFixture.with(workers) { fixture in
            @Sendable func setRole(_ role: String) async throws {
                let r = try await fixture.busctl(["call", DaemonFixture.busName, DaemonFixture.manager, DaemonFixture.interface,
                                                  "SetHARole", "s", role])
                #expect(r.status == 0, "\(r.stderr)")
            }
            try await setRole("primary")
            #expect(try await fixture.worker("p").state == "running")
            let (holder, _) = try await Self.hold(fixture, who: "upgrade", why: "role test")
            #expect(try await fixture.worker("p").state == "standby")
            let monitor = try await fixture.monitor()
            let daemon = try await fixture.daemonUniqueName()
            // Every change up to each SetHARole's reply (which comes once the change is carried
            // out): none starts p or s while maintenance holds them.
            for role in ["secondary", "primary", "secondary", "primary"] {
                async let reply: Void = setRole(role)
                let (changes, _) = try await monitor.changes(untilReplyTo: "SetHARole", daemon: daemon)
                try await reply
                #expect(changes.isEmpty, "role \(role) during maintenance: \(changes)")
            }
            #expect(try await fixture.worker("p").state == "standby")
            #expect(try await fixture.worker("s").state == "standby")
            #expect(try await fixture.property("HARole").string == "primary")
            holder.signal(SIGTERM)
            _ = try await monitor.waitUntil(fixture, worker: "p", is: "running")
            #expect(try await fixture.worker("s").state == "standby")
        }
    }

    @Test func aReloadDuringMaintenanceAddsTheNewWorkerInStandby() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let (holder, _) = try await Self.hold(fixture, who: "ops", why: "reload test")
            let monitor = try await fixture.monitor()
            try fixture.writeConfiguration(Self.workers + shellWorker("added", "exec sleep 1000"))
            try await fixture.call("Reload")
            let added = try await fixture.worker("added")
            #expect(added.state == "standby" && added.pid == 0, "\(added)")
            #expect(try await fixture.property("StateReason", worker: "added").string == "maintenance: ops: reload test")
            holder.signal(SIGTERM)
            _ = try await monitor.waitUntil(fixture, worker: "added", is: "running")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: setpriv to a real non-root caller"))
    func aNonRootCallerGetsAccessDeniedAndNoFd() async throws {
        try await DaemonFixture.with(Self.workers, daemonSettings: #"admin-group = "4242""#) { fixture in
            let pid = try await fixture.worker("held").pid
            let (_, line) = try await Self.hold(fixture, who: "nobody", why: "tries", asUser: 65534)
            #expect(line == "held 0 errors org.freedesktop.DBus.Error.AccessDenied stale [] dead []", "\(line)")
            #expect(try await Self.maintenance(fixture) == false)
            #expect(try await Self.inhibitors(fixture).isEmpty)
            #expect(try await fixture.worker("held").pid == pid)
            // Reading is open.
            let list = try await fixture.dbusSend("ListInhibitors", asUser: 65534)
            #expect(list.status == 0, "\(list.output)")
        }
    }
}

/// Retries `check` (a bus read) until it holds; each try is a round trip to the daemon, never a
/// sleep.
func waitUntil(_ what: String, timeout: Duration = .seconds(15), _ check: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !check() {
        guard ContinuousClock.now < deadline else { throw TestProcessError("\(what): not within \(timeout)") }
        await Task.yield()
    }
}

/// Inhibitors are FIFOs in the runtime folder: a restarted daemon takes them back.
@Suite(.timeLimit(.minutes(3)))
struct DaemonMaintenanceRestartTests {
    @Test func anInhibitorOutlivesARestartOfTheDaemon() async throws {
        try await DaemonFixture.with(DaemonMaintenanceTests.workers) { fixture in
            let (holder, _) = try await DaemonMaintenanceTests.hold(fixture, who: "apt", why: "upgrades bgworker")
            let before = try await DaemonMaintenanceTests.inhibitors(fixture)
            try await fixture.stopDaemon()
            try await fixture.startDaemon()
            // From its first start on: held never ran under the new daemon.
            #expect(try await DaemonMaintenanceTests.maintenance(fixture) == true)
            let held = try await fixture.worker("held")
            #expect(held.state == "standby" && held.pid == 0, "\(held)")
            // (Its StateReason is empty: a worker that rests from the start has had no state change,
            // as a standby worker of the HA role at start; ListInhibitors says who holds it.)
            #expect(try await fixture.worker("exempt").state == "running")
            #expect(try await DaemonMaintenanceTests.inhibitors(fixture) == before)
            #expect(try fixture.daemon.log.contains("taken back from the previous daemon"))

            let monitor = try await fixture.monitor()
            holder.signal(SIGTERM)
            try await DaemonMaintenanceTests.maintenanceChanged(monitor, to: false)
            _ = try await monitor.waitUntil(fixture, worker: "held", is: "running")
            #expect(try await DaemonMaintenanceTests.inhibitors(fixture).isEmpty)
            let left = try FileManager.default.contentsOfDirectory(atPath: fixture.directory.file("run/inhibitors"))
            #expect(left.isEmpty, "\(left)")
        }
    }

    /// A holder that died while no daemon ran: the next daemon ends maintenance at once.
    @Test func anInhibitorWhoseHolderDiedMeanwhileEndsAtStart() async throws {
        try await DaemonFixture.with(DaemonMaintenanceTests.workers) { fixture in
            let (holder, _) = try await DaemonMaintenanceTests.hold(fixture, who: "apt", why: "crashed")
            try await fixture.stopDaemon()
            holder.signal(SIGKILL)
            _ = try await holder.waitForExit()
            try await fixture.startDaemon()
            let monitor = try await fixture.monitor()
            _ = try await monitor.waitUntil(fixture, worker: "held", is: "running")
            #expect(try await DaemonMaintenanceTests.maintenance(fixture) == false)
            #expect(try await DaemonMaintenanceTests.inhibitors(fixture).isEmpty)
        }
    }
}
