import Foundation
import Glibc
import Testing
import TestSupport

/// Tests of the test harness's launchers for real components: they must work, or every test
/// built on them means nothing.
@Suite struct HarnessSystemTests {
    // MARK: keepalived pair

    @Test(.enabled(if: rootTestsEnabled, "needs root: network namespaces for the keepalived pair"),
          .timeLimit(.minutes(2)))
    func keepalivedPairElectsMasterAndFailsOverOnSIGTERM() async throws {
        try await KeepalivedPair.with { pair in
            let master = try await pair.waitForMaster()
            #expect(master.name == "A", "the higher priority wins; A: \(pair.a.log)")
            // What a client no one here wrote reads on each node's own bus.
            #expect(try await pair.readState(on: pair.a) == KeepalivedPair.Status.master)
            #expect(try await pair.readState(on: pair.b) == KeepalivedPair.Status.backup)
            #expect(try await pair.readMaster() === pair.a)

            try await pair.stopKeepalived(on: pair.a)  // SIGTERM
            try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.b, timeout: .seconds(10))
            #expect(try await pair.readState(on: pair.b) == KeepalivedPair.Status.master)
            #expect(try await pair.readState(on: pair.a) == nil, "no keepalived owns the name on A any more")
            let observedA = pair.a.observed.value
            #expect(observedA.stopped == 1 && observedA.changes.last == KeepalivedPair.Status.stopped,
                    "A said goodbye on its bus: \(observedA)")

            // A comes back and, with the higher priority, takes over again (preemption).
            try await pair.startKeepalived(on: pair.a)
            try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.a)
            try await pair.waitForStatus(KeepalivedPair.Status.backup, on: pair.b)
            #expect(try await pair.readMaster() === pair.a)
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: network namespaces for the keepalived pair"),
          .timeLimit(.minutes(2)))
    func keepalivedPairFailsOverWhenTheMasterIsKilled() async throws {
        try await KeepalivedPair.with { pair in
            try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.a)
            let pid = try #require(pair.a.keepalivedPid)
            let children = childPids(of: pid)
            #expect(!children.isEmpty, "keepalived runs its VRRP child")
            try await pair.stopKeepalived(on: pair.a, signal: SIGKILL)
            for child in children { #expect(kill(child, 0) != 0, "VRRP child \(child) is gone") }
            try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.b, timeout: .seconds(15))
            #expect(pair.a.observed.value.stopped == 0, "a crash sends no VrrpStopped")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: network namespaces for the keepalived pair"))
    func keepalivedPairTearsDownEverything() async throws {
        let pair = try await KeepalivedPair.start()
        let namespaces = pair.nodes.map(\.namespace)
        let pids = pair.nodes.compactMap(\.keepalivedPid) + pair.nodes.map(\.bus.process.pid)
        await pair.teardown()
        let listed = try await runChecked(["ip", "netns", "list"])
        for ns in namespaces { #expect(!listed.contains(ns)) }
        for pid in pids { #expect(kill(pid, 0) != 0, "pid \(pid) is gone") }
    }

    // MARK: systemd in a namespace

    @Test(.enabled(if: rootTestsEnabled, "needs root: PID and mount namespaces for systemd"),
          .timeLimit(.minutes(2)))
    func systemdNamespaceRunsATransientUnitAndLeavesTmpAlone() async throws {
        let canary = "/tmp/bgw-canary-\(uniqueID())"
        try "alive".write(toFile: canary, atomically: false, encoding: .utf8)
        defer { unlink(canary) }

        var systemdPid: pid_t = 0
        var cgroups: [String] = []
        let slice = "[Unit]\nDescription=bgworker test slice\n"
        let shared = try TemporaryDirectory(prefix: "bgw-shared")
        defer { shared.remove() }
        try await SystemdNamespace.with(extraUnits: ["bgworker-test.slice": slice], sharedPaths: [shared.path]) { ns in
            systemdPid = ns.systemdPid
            cgroups = ns.cgroupDirectories
            #expect(!cgroups.isEmpty)
            let subscriber = try await ns.keepSubscribed()
            let monitor = try await BusMonitor(address: ns.busAddress, matches: [
                "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.systemd1.Manager',member='JobRemoved'",
            ])
            let unit = "bgworker-harness-\(uniqueID(6)).service"
            let call = try await ns.busctl([
                "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
                unit, "fail", "3",
                "ExecStart", "a(sasb)", "1", "/bin/sleep", "2", "/bin/sleep", "300", "false",
                "Description", "s", "harness test unit",
                "CollectMode", "s", "inactive-or-failed",
                "0",
            ])
            #expect(call.status == 0, "StartTransientUnit: \(call.stderr)")
            let job = try #require(call.stdout.split(separator: "\"").dropFirst().first.map(String.init))
            let removed = try await monitor.waitFor("JobRemoved of \(job)") { $0.body.count == 4 && $0.body[1].string == job }
            #expect(removed.body[3].string == "done")

            let path = "/org/freedesktop/systemd1/unit/" + systemdEscaped(unit)
            let mainPid = try await ns.busctl(["get-property", "org.freedesktop.systemd1", path,
                                               "org.freedesktop.systemd1.Service", "MainPID"])
            let pid = try #require(mainPid.stdout.split(separator: " ").last.flatMap { Int32($0) }, "\(mainPid)")
            #expect(pid > 1)
            let active = try await ns.busctl(["get-property", "org.freedesktop.systemd1", path,
                                              "org.freedesktop.systemd1.Unit", "ActiveState"])
            #expect(active.stdout == "s \"active\"")
            // The MainPID is the namespace's pid of the unit's process. A simple service's job is
            // done once systemd has forked it, maybe before its exec: the child is then still named
            // "(sleep)" (or "systemd" for an instant); CI on a loaded machine saw "systemd".
            let comm = try await ns.run(inside: ["cat", "/proc/\(pid)/comm"])
            #expect(["sleep", "(sleep)", "systemd"].contains(comm.stdout), "\(comm.stdout)")
            // The unit's cgroup is in this namespace's own subtree, not shared with another systemd.
            #expect(cgroups.contains { FileManager.default.fileExists(atPath: "\($0)/system.slice/\(unit)") },
                    "\(unit) under \(cgroups)")

            // Extra units are there for systemd to load.
            let loaded = try await ns.busctl(["call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                                              "org.freedesktop.systemd1.Manager", "LoadUnit", "s", "bgworker-test.slice"])
            let slicePath = try #require(loaded.stdout.split(separator: "\"").dropFirst().first.map(String.init), "\(loaded)")
            let loadState = try await ns.busctl(["get-property", "org.freedesktop.systemd1", slicePath,
                                                 "org.freedesktop.systemd1.Unit", "LoadState"])
            #expect(loadState.stdout == "s \"loaded\"")

            // A shared folder of the test is there, at the same path, writable: a oneshot unit
            // writes into it, and its JobRemoved comes once it has.
            let writer = "bgworker-writer-\(uniqueID(6)).service"
            // "--": the "-c" below is the shell's, not an option of busctl.
            let wrote = try await ns.busctl([
                "--", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
                writer, "fail", "2",
                "Type", "s", "oneshot",
                "ExecStart", "a(sasb)", "1", "/bin/sh", "3", "/bin/sh", "-c", "echo written > \(shared.file("out"))", "false",
                "0",
            ])
            let writerJob = try #require(wrote.stdout.split(separator: "\"").dropFirst().first.map(String.init), "\(wrote)")
            let writerDone = try await monitor.waitFor("JobRemoved of \(writerJob)") { $0.body.count == 4 && $0.body[1].string == writerJob }
            #expect(writerDone.body[3].string == "done")
            #expect((try? String(contentsOfFile: shared.file("out"), encoding: .utf8)) == "written\n")

            // Its /tmp is not ours.
            let inside = try await ns.run(inside: ["ls", "-A", "/tmp"])
            #expect(!inside.stdout.contains("bgw-canary"), "the namespace sees a private /tmp")

            await monitor.stop()
            await subscriber.terminate(grace: .seconds(1))
        }
        #expect(kill(systemdPid, 0) != 0, "systemd is gone")
        #expect(access(canary, F_OK) == 0, "the canary in the real /tmp survived systemd")
        for dir in cgroups { #expect(access(dir, F_OK) != 0, "cgroup left behind: \(dir)") }
    }

    // MARK: smaller pieces, no root needed

    @Test func busMonitorSeesASignalWithItsArguments() async throws {
        let bus = try await PrivateBus()
        let monitor = try await BusMonitor(address: bus.unixAddress, matches: ["type='signal',interface='org.example.Test'"])
        let r = try await run(["gdbus", "emit", "--address", bus.unixAddress, "-o", "/org/example/Test",
                               "-s", "org.example.Test.Changed", "uint32 7", "'hello'"])
        #expect(r.status == 0, "\(r.stderr)")
        let m = try await monitor.waitFor("Changed") { $0.member == "Changed" }
        #expect(m.path == "/org/example/Test")
        #expect(m.signature == "us")
        #expect(m.body == [.int(7), .string("hello")])
        await monitor.stop()
        await bus.stop()
    }

    @Test func notifySocketReceivesSystemdNotify() async throws {
        let notify = try NotifySocket()
        let r = try await run(["systemd-notify", "--no-block", "--ready", "--status=up and running"],
                              environment: ["NOTIFY_SOCKET": notify.address])
        #expect(r.status == 0, "\(r.stderr)")
        let message = try await notify.waitFor("READY", value: "1")
        #expect(message.contains { $0.key == "STATUS" && $0.value == "up and running" })
    }

    @Test func watchedValueWakesWaitersOnUpdateAndTimesOut() async throws {
        let value = WatchedValue(0)
        async let reached = value.wait("3", timeout: .seconds(10)) { $0 == 3 }
        for i in 1...3 { value.update { $0 = i } }
        #expect(try await reached == 3)
        await #expect(throws: TestProcessError.self) {
            try await value.wait("never", timeout: .milliseconds(50)) { $0 == 99 }
        }
    }
}

/// systemd's object-path escaping of unit names (org.freedesktop.systemd1(5)).
private func systemdEscaped(_ name: String) -> String {
    var out = ""
    for (i, byte) in name.utf8.enumerated() {
        let c = Character(UnicodeScalar(byte))
        if (c.isASCII && (c.isLetter || c.isNumber)) && !(i == 0 && c.isNumber) { out.append(c) }
        else { out += String(format: "_%02x", byte) }
    }
    return out
}
