import Foundation
import Glibc
import Testing
import TestSupport

// `[ha] source = "pacemaker"`: SetHARole, the lease, and the OCF agent `config/ocf/role` against
// the real bgworkerd (docs/pacemaker.md). The three-node cluster tests are in
// PacemakerClusterTests.

private let manager = ["org.example.BgWorker", "/org/example/BgWorker", "org.example.BgWorker"]
private let agent = repositoryRoot() + "/config/ocf/role"

/// `busctl call ... SetHARole s ROLE` on the node's bus (optionally as nobody).
private func setHARole(_ node: HADaemonNode, _ role: String, asNobody: Bool = false) async throws -> (status: Int32, stdout: String, stderr: String) {
    let prefix = asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
    return try await run(prefix + ["busctl", "--address=\(node.bus.unixAddress)", "call"] + manager + ["SetHARole", "s", role])
}

/// The agent run as Pacemaker's executor would: `__OCF_ACTION` set, the bus as a parameter.
private func runAgent(_ action: String, bus: PrivateBus, interval: Int = 20000, timeoutMilliseconds: Int = 20000) async throws -> Int32 {
    try await run([agent, action], environment: [
        "OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": "bgw-test", "__OCF_ACTION": action,
        "OCF_RESKEY_bus": bus.unixAddress, "OCF_RESKEY_CRM_meta_interval": "\(interval)",
        "OCF_RESKEY_CRM_meta_timeout": "\(timeoutMilliseconds)",
    ], timeout: .milliseconds(timeoutMilliseconds) + .seconds(10)).status
}

@Suite(.serialized) struct PacemakerSourceTests {
    @Test func setHARoleSetsTheRoleAndRejectsBadInput() async throws {
        let bus = try await PrivateBus()
        let node = try await HADaemonNode("pcmk", bus: bus, ha: "source = \"pacemaker\"")
        try await withNodes([node]) {
            #expect(try await node.haRole() == "unknown")
            #expect(try await node.waitFor(["p": "standby", "s": "standby"]).roles.isEmpty)
            for bad in ["standalone", "Primary", "", "master"] {
                let r = try await setHARole(node, bad)
                #expect(r.status != 0 && r.stderr.contains("unknown role"), "\(bad): \(r)")
            }
            #expect(try await setHARole(node, "primary").status == 0)
            try await node.waitFor(["p": "running", "s": "standby"])
            // A renewal changes nothing and announces nothing.
            #expect(try await setHARole(node, "primary").status == 0)
            #expect(try await setHARole(node, "secondary").status == 0)
            // SetHARole(secondary) replied after p was gone (the daemon's own list says so at once).
            #expect(try await node.workers()["p"]?.state == "standby")
            try await node.waitFor(["p": "standby", "s": "running"])
            #expect(try await setHARole(node, "unknown").status == 0)
            try await node.waitFor(["p": "standby", "s": "standby"])
            #expect(node.history.value.roles == ["primary", "secondary", "unknown"])
            node.expectNeverTwoProcesses()
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: the caller switches to nobody"))
    func onlyRootMaySetTheRole() async throws {
        let bus = try await PrivateBus()
        let node = try await HADaemonNode("pcmk", bus: bus, ha: "source = \"pacemaker\"")
        try await withNodes([node]) {
            // The permissive test bus lets nobody through: the daemon itself refuses.
            let monitor = try await BusMonitor(address: bus.unixAddress, matches: ["type='error'"])
            let r = try await setHARole(node, "primary", asNobody: true)
            #expect(r.status != 0)
            let error = try await monitor.waitFor("the error reply", timeout: .seconds(10)) { $0.type == "error" }
            #expect(error.errorName == "org.freedesktop.DBus.Error.AccessDenied")
            #expect(error.body.first?.string == "only root may set the HA role (caller uid 65534)")
            #expect(try await node.haRole() == "unknown")
            await monitor.stop()
        }
    }

    @Test(arguments: ["source = \"none\"", "source = \"dbus\""])
    func otherSourcesAnswerNotSupported(ha: String) async throws {
        let bus = try await PrivateBus()
        let node = try await HADaemonNode("other", bus: bus, ha: ha)
        try await withNodes([node]) {
            let r = try await node.busctl(["call"] + manager + ["SetHARole", "s", "primary"])
            #expect(r.status != 0 && r.stderr.contains("SetHARole needs [ha] source = \"pacemaker\""), "\(r)")
            // The error's name is the contract's.
            let monitor = try await BusMonitor(address: bus.unixAddress, matches: ["type='error'"])
            _ = try await node.busctl(["call"] + manager + ["SetHARole", "s", "primary"])
            let error = try await monitor.waitFor("the error reply", timeout: .seconds(10)) { $0.type == "error" }
            #expect(error.errorName == "org.example.BgWorker.Error.NotSupported")
            await monitor.stop()
        }
    }

    /// SetHARole replies only once the workers it stops are gone: Pacemaker's demote on this node
    /// must end before its promote elsewhere starts the primary workers there.
    @Test func setHARoleRepliesOnceTheStoppedWorkersAreGone() async throws {
        let bus = try await PrivateBus()
        let directory = try TemporaryDirectory(prefix: "bgw-pcmk-slow")
        defer { directory.remove() }
        let config = directory.file("bgworkerd.toml")
        // p takes a second to stop after SIGTERM (a worker finishing its work).
        try ("""
            [daemon]
            state-directory = "\(directory.file("state"))"

            [ha]
            source = "pacemaker"

            """ + shellWorker("p", "trap 'sleep 1; exit 0' TERM; sleep 3600 & wait", extra: "run-on = \"primary\"\nstop-timeout = 10.0"))
            .write(toFile: config, atomically: true, encoding: .utf8)
        let daemon = try await DaemonProcess(bus: bus, configPath: config, arguments: ["--runner", "process"])
        let call = { (role: String) in try await daemon.busctl(["call"] + manager + ["SetHARole", "s", role]) }
        #expect(try await call("primary").status == 0)
        let monitor = try await BusMonitor(address: bus.unixAddress, matches: ["type='signal',interface='org.example.BgWorker',member='WorkerStateChanged'"])
        let start = ContinuousClock.now
        #expect(try await call("secondary").status == 0)
        let took = ContinuousClock.now - start
        #expect(took >= .seconds(1), "SetHARole(secondary) replied after \(took), before p was gone")
        let list = try await daemon.busctl(["call"] + manager + ["ListWorkers"])
        #expect(list.stdout.contains("\"p\" \"standby\""), "\(list.stdout)")
        _ = try await monitor.waitFor("p standby", timeout: .seconds(10)) { $0.body.count >= 2 && $0.body[1].string == "standby" }
        await monitor.stop()
        await daemon.process.terminate(grace: .seconds(10))
    }

    /// Nobody renews: at the lease's end the role is `unknown`, announced before the primary
    /// worker's stop, as a source's report would be.
    @Test func theLeaseRunsOut() async throws {
        let bus = try await PrivateBus()
        let node = try await HADaemonNode("pcmk", bus: bus, ha: "source = \"pacemaker\"\nlease = 1.5")
        try await withNodes([node]) {
            let monitor = try await BusMonitor(address: bus.unixAddress, matches: ["type='signal',interface='org.example.BgWorker'"])
            // Before the call: the lease starts later, inside it, so the expiry is at least 1.5 s after.
            let setAt = ContinuousClock.now
            #expect(try await setHARole(node, "primary").status == 0)
            try await node.waitFor(["p": "running"])
            let unknown = try await monitor.waitFor("HARoleChanged unknown", timeout: .seconds(10)) {
                $0.member == "HARoleChanged" && $0.body.first?.string == "unknown"
            }
            let after = ContinuousClock.now - setAt
            #expect(unknown.body.first?.string == "unknown")
            #expect(after >= .seconds(1.5) && after < .seconds(4), "lease 1.5 s ran out after \(after)")
            let stopping = try await monitor.waitFor("p stopping", timeout: .seconds(10)) {
                $0.member == "WorkerStateChanged" && $0.body.first?.string == "p"
            }
            #expect(stopping.body.count == 4 && stopping.body[1].string == "stopping")
            #expect(stopping.body[3].string == "HA role unknown (lease of 1.5 s ran out)")
            try await node.waitFor(["p": "standby"])
            #expect(node.log.contains("no SetHARole within the lease"))
            await monitor.stop()
            node.expectNeverTwoProcesses()
        }
    }
}

@Suite(.serialized) struct PacemakerAgentTests {
    /// The agent against a real bgworkerd, as Debian's `ocf-tester` drives it (as root it also
    /// runs meta-data as nobody).
    @Test(.enabled(if: which("ocf-tester") != nil || isCI, "needs ocf-tester (Debian package resource-agents)"))
    func passesOCFTester() async throws {
        let bus = try await PrivateBus()
        let node = try await HADaemonNode("ocf", bus: bus, ha: "source = \"pacemaker\"")
        try await withNodes([node]) {
            let r = try await run(["ocf-tester", "-n", "bgw-test", "-o", "bus=\(bus.unixAddress)", agent], timeout: .seconds(120))
            #expect(r.status == 0, "ocf-tester:\n\(r.stdout)\n\(r.stderr)")
            #expect(r.stdout.contains("passed all tests"), "\(r.stdout)")
            #expect(try await node.haRole() == "unknown")
            node.expectNeverTwoProcesses()
        }
    }

    @Test func everyActionAndItsExitStatus() async throws {
        let bus = try await PrivateBus()
        let node = try await HADaemonNode("ocf", bus: bus, ha: "source = \"pacemaker\"")
        try await withNodes([node]) {
            // meta-data touches nothing: it works with no bus at all, as any user.
            let meta = try await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", agent, "meta-data"],
                                     environment: ["__OCF_ACTION": "meta-data", "OCF_RESKEY_bus": "unix:path=/nonexistent"])
            #expect(meta.status == 0 && meta.stdout.contains("<action name=\"promote\"") && meta.stdout.contains("<parameter name=\"bus\""))
            #expect(try await runAgent("monitor", bus: bus) == 7)
            #expect(try await runAgent("start", bus: bus) == 0)
            #expect(try await node.haRole() == "secondary")
            #expect(try await runAgent("monitor", bus: bus) == 0)
            #expect(try await runAgent("promote", bus: bus) == 0)
            try await node.waitFor(["p": "running"])
            #expect(try await runAgent("monitor", bus: bus) == 8)
            #expect(try await runAgent("monitor", bus: bus, interval: 0) == 8)
            #expect(try await runAgent("notify", bus: bus) == 0)
            #expect(try await runAgent("validate-all", bus: bus) == 0)
            #expect(try await runAgent("demote", bus: bus) == 0)
            // demote returned once p was gone.
            #expect(try await node.workers()["p"]?.state == "standby")
            #expect(try await runAgent("stop", bus: bus) == 0)
            #expect(try await node.haRole() == "unknown")
            #expect(try await runAgent("monitor", bus: bus) == 7)
            #expect(try await runAgent("migrate_to", bus: bus) == 3)
            // No daemon on the bus: monitor says not running, stop and demote succeed, start fails
            // once its timeout (4 s, less its 3 s margin) has passed.
            let empty = try await PrivateBus()
            #expect(try await runAgent("monitor", bus: empty) == 7)
            #expect(try await runAgent("stop", bus: empty) == 0)
            #expect(try await runAgent("demote", bus: empty) == 0)
            #expect(try await runAgent("start", bus: empty, timeoutMilliseconds: 4000) == 1)
            await empty.stop()
        }
    }

    /// `start` waits for a bgworkerd that is not on the bus yet (being restarted by systemd)
    /// instead of failing at once, which Pacemaker treats as fatal on the node: a CI run saw the
    /// instance banned from the node whose daemon had just been restarted.
    @Test func startWaitsForADaemonThatComesUp() async throws {
        let bus = try await PrivateBus()
        let waiting = Task { try await runAgent("start", bus: bus) }
        let node = try await HADaemonNode("late", bus: bus, ha: "source = \"pacemaker\"")
        try await withNodes([node]) {
            let status = try await waiting.value
            #expect(status == 0)
            #expect(try await node.haRole() == "secondary")
        }
        await bus.stop()
    }

    /// `monitor` renews the lease: a node whose agent keeps being called stays primary past
    /// several leases; once the calls stop, the role ends one lease after the last one.
    @Test func monitorRenewsTheLease() async throws {
        let bus = try await PrivateBus()
        // A lease of 3 s: one call of the agent took over 1 s on a CI machine at load 200.
        let node = try await HADaemonNode("ocf", bus: bus, ha: "source = \"pacemaker\"\nlease = 3")
        try await withNodes([node]) {
            #expect(try await runAgent("start", bus: bus) == 0)
            #expect(try await runAgent("promote", bus: bus) == 0)
            let start = ContinuousClock.now
            var lastMonitor = start
            // Back to back, each call waits for the previous one: 2 leases long.
            while ContinuousClock.now - start < .seconds(6) {
                #expect(try await runAgent("monitor", bus: bus) == 8)
                lastMonitor = ContinuousClock.now
            }
            #expect(node.history.value.roles == ["secondary", "primary"])
            try await node.waitForRole("unknown", timeout: .seconds(20))
            let after = ContinuousClock.now - lastMonitor
            #expect(after < .seconds(9), "role unknown \(after) after the last monitor, lease 3 s")
            #expect(try await runAgent("monitor", bus: bus) == 7)
        }
    }
}
