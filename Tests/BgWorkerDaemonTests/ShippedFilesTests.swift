import BgWorkerCore
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Glibc
import Testing
import TestSupport

/// The files the project ships (dbus/, config/) agree with the contract
/// (/work/shared/interface.md) and load in the real programs that read them.
@Suite struct ShippedFilesTests {
    static let root = repositoryRoot()

    // MARK: introspection XML

    struct Member: Equatable, CustomStringConvertible {
        var kind: String  // method, signal, property
        var name: String
        var detail: [String]  // args as "name:type:direction", or [type, access] for properties
        var description: String { "\(kind) \(name)(\(detail.joined(separator: ", ")))" }
    }

    static func members(ofInterface interface: String, inFile file: String) throws -> [Member] {
        let document = try XMLDocument(contentsOf: URL(fileURLWithPath: "\(root)/dbus/\(file)"), options: [])
        let interfaces = try document.nodes(forXPath: "/node/interface") as? [XMLElement] ?? []
        #expect(interfaces.count == 1, "one interface per file")
        let element = try #require(interfaces.first)
        #expect(element.attribute(forName: "name")?.stringValue == interface)
        return (element.children ?? []).compactMap { $0 as? XMLElement }.map { child in
            let name = child.attribute(forName: "name")?.stringValue ?? "?"
            let kind = child.name ?? "?"
            if kind == "property" {
                return Member(kind: kind, name: name, detail: [
                    child.attribute(forName: "type")?.stringValue ?? "?",
                    child.attribute(forName: "access")?.stringValue ?? "?",
                ])
            }
            let args = (child.elements(forName: "arg")).map { arg in
                [arg.attribute(forName: "name")?.stringValue ?? "?",
                 arg.attribute(forName: "type")?.stringValue ?? "?",
                 arg.attribute(forName: "direction")?.stringValue ?? (kind == "signal" ? "" : "in")]
                    .filter { !$0.isEmpty }.joined(separator: ":")
            }
            return Member(kind: kind, name: name, detail: args)
        }
    }

    /// Property names whose annotation says something else than "true" (the D-Bus default).
    static func changeSignalAnnotations(inFile file: String) throws -> [String: String] {
        let document = try XMLDocument(contentsOf: URL(fileURLWithPath: "\(root)/dbus/\(file)"), options: [])
        let properties = try document.nodes(forXPath: "//property") as? [XMLElement] ?? []
        var result: [String: String] = [:]
        for p in properties {
            let annotation = p.elements(forName: "annotation").first {
                $0.attribute(forName: "name")?.stringValue == "org.freedesktop.DBus.Property.EmitsChangedSignal"
            }
            result[p.attribute(forName: "name")?.stringValue ?? "?"] = annotation?.attribute(forName: "value")?.stringValue
        }
        return result
    }

    @Test func managerInterfaceMatchesTheContract() throws {
        let expected: [Member] = [
            Member(kind: "method", name: "Enable", detail: ["name:s:in"]),
            Member(kind: "method", name: "Disable", detail: ["name:s:in"]),
            Member(kind: "method", name: "Restart", detail: ["name:s:in"]),
            Member(kind: "method", name: "Reload", detail: []),
            Member(kind: "method", name: "ListWorkers", detail: ["workers:a(ssbuo):out"]),
            Member(kind: "method", name: "GetWorker", detail: ["name:s:in", "path:o:out"]),
            Member(kind: "method", name: "Stop", detail: ["name:s:in"]),
            Member(kind: "method", name: "Start", detail: ["name:s:in"]),
            Member(kind: "method", name: "Logs", detail: ["name:s:in", "lines:u:in", "output:a(ts):out"]),
            // Beyond the contract: `logs -f` where no journal runs (docs/bgworkerctl.md).
            Member(kind: "method", name: "FollowLogs", detail: ["name:s:in", "lines:u:in", "output:h:out"]),
            Member(kind: "method", name: "Inhibit", detail: ["who:s:in", "why:s:in", "fd:h:out"]),
            Member(kind: "method", name: "ListInhibitors", detail: ["inhibitors:a(ssuut):out"]),
            Member(kind: "method", name: "SetHARole", detail: ["role:s:in"]),
            Member(kind: "signal", name: "WorkerStateChanged", detail: ["name:s", "state:s", "pid:u", "reason:s"]),
            Member(kind: "signal", name: "HARoleChanged", detail: ["role:s"]),
            Member(kind: "property", name: "Version", detail: ["s", "read"]),
            Member(kind: "property", name: "HARole", detail: ["s", "read"]),
            Member(kind: "property", name: "LogLevel", detail: ["s", "readwrite"]),
            Member(kind: "property", name: "Runner", detail: ["s", "read"]),
            Member(kind: "property", name: "Maintenance", detail: ["b", "read"]),
        ]
        #expect(try Self.members(ofInterface: "org.example.BgWorker", inFile: "org.example.BgWorker.xml") == expected)
        let annotations = try Self.changeSignalAnnotations(inFile: "org.example.BgWorker.xml")
        #expect(annotations == ["Version": "const", "HARole": "true", "LogLevel": "true", "Runner": "true", "Maintenance": "true"])
    }

    @Test func workerInterfaceMatchesTheContract() throws {
        let properties: [(String, String)] = [
            ("Name", "s"), ("State", "s"), ("Enabled", "b"), ("Pid", "u"), ("Restarts", "u"),
            ("LastExit", "s"), ("RunOn", "s"), ("StateChangedAt", "t"),
        ]
        let expected = ["Enable", "Disable", "Restart", "Start", "Stop"].map { Member(kind: "method", name: $0, detail: []) }
            + properties.map { Member(kind: "property", name: $0.0, detail: [$0.1, "read"]) }
            + [Member(kind: "property", name: "LogLevel", detail: ["s", "readwrite"]),
               Member(kind: "property", name: "EffectiveLogLevel", detail: ["s", "read"]),
               Member(kind: "property", name: "StateReason", detail: ["s", "read"]),
               Member(kind: "property", name: "StatusText", detail: ["s", "read"]),
               Member(kind: "property", name: "ReadyAt", detail: ["t", "read"])]
        #expect(try Self.members(ofInterface: "org.example.BgWorker.Worker", inFile: "org.example.BgWorker.Worker.xml") == expected)
        let annotations = try Self.changeSignalAnnotations(inFile: "org.example.BgWorker.Worker.xml")
        #expect(annotations["Name"] == "const")
        #expect(annotations.filter { $0.key != "Name" }.values.allSatisfy { $0 == "true" })
    }

    @Test func haManagerInterfaceMatchesTheContract() throws {
        let expected = [
            Member(kind: "property", name: "Role", detail: ["s", "read"]),
            Member(kind: "signal", name: "RoleChanged", detail: ["role:s"]),
        ]
        #expect(try Self.members(ofInterface: "org.example.HAManager", inFile: "org.example.HAManager.xml") == expected)
    }

    @Test func interfaceFilesLoadInGLibsIntrospectionParser() async throws {
        // GLib's own parser (Gio.DBusNodeInfo, what gdbus and GDBus services use), through python3-gi.
        let script = """
            import sys
            from gi.repository import Gio
            info = Gio.DBusNodeInfo.new_for_xml(open(sys.argv[1]).read())
            print(" ".join(i.name for i in info.interfaces))
            """
        for (file, interface) in [("org.example.BgWorker.xml", "org.example.BgWorker"),
                                  ("org.example.BgWorker.Worker.xml", "org.example.BgWorker.Worker"),
                                  ("org.example.HAManager.xml", "org.example.HAManager")] {
            let r = try await run(["/usr/bin/python3", "-c", script, "\(Self.root)/dbus/\(file)"])
            #expect(r.status == 0 && r.stdout == interface, "\(file): \(r.stderr)")
        }
    }

    // MARK: bus policy

    /// A caller: root (nil) or another user, with a client no one here wrote (gdbus, which prints
    /// the bus's own error text), through `setpriv`.
    static func gdbus(as user: (uid: Int, gid: Int, groups: [Int])?, on bus: PrivateBus, _ arguments: [String]) async throws
        -> (status: Int32, stdout: String, stderr: String)
    {
        var argv = ["gdbus", "call", "--address", bus.unixAddress, "--dest", "org.example.BgWorker"] + arguments
        if let user {
            let groups = user.groups.isEmpty ? ["--clear-groups"] : ["--groups=\(user.groups.map(String.init).joined(separator: ","))"]
            argv = ["setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)"] + groups + argv
        }
        return try await run(argv)
    }

    /// The shipped policy on a bus that denies by default as the real system bus does, with the
    /// real daemon (as root) owning the name: everyone reads; a non-root caller's state-changing
    /// calls are refused by the bus itself ("Rejected send message") before the daemon sees them;
    /// root and the admin group get through (and the daemon, with the same admin group, obeys).
    @Test(.enabled(if: rootTestsEnabled, "needs root: the policy lets only root own the name, and callers switch users"),
          .timeLimit(.minutes(2)))
    func busPolicyLetsEveryoneReadAndOnlyRootAndAdminsChangeState() async throws {
        // The shipped policy with its admin group renamed to one that exists on every Debian
        // machine ("users", gid 100), so the group rule is exercised without creating a group.
        let directory = try TemporaryDirectory(prefix: "bgw-policy")
        let shipped = try String(contentsOfFile: "\(Self.root)/dbus/org.example.BgWorker.conf", encoding: .utf8)
        #expect(shipped.contains("group=\"bgworker-admin\""))
        let policyFile = directory.file("org.example.BgWorker.conf")
        try shipped.replacingOccurrences(of: "group=\"bgworker-admin\"", with: "group=\"users\"")
            .write(toFile: policyFile, atomically: true, encoding: .utf8)
        let bus = try await PrivateBus(policy: PrivateBus.systemBusPolicy(including: [policyFile]), directory: directory)
        let configPath = directory.file("bgworkerd.toml")
        try """
            [daemon]
            state-directory = "\(directory.file("state"))"
            admin-group = "users"

            [worker.dice]
            exec = ["/bin/sleep", "1000"]
            run-on = "any"
            stop-timeout = 1.0
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
        try await withCleanup(directory, cleanup: { _ in await bus.stop() }) { _ in
            let nobody = (uid: 65534, gid: 65534, groups: [Int]())
            let admin = (uid: 65534, gid: 65534, groups: [100])

            // Nobody but root may own the name.
            let ownAsNobody = try await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                             "/usr/bin/python3", "-c",
                                             "import dbus,sys; dbus.bus.BusConnection(sys.argv[1]).request_name('org.example.BgWorker')",
                                             bus.unixAddress])
            #expect(ownAsNobody.status != 0 && ownAsNobody.stderr.contains("AccessDenied"), "\(ownAsNobody.stderr)")

            let daemon = try await DaemonProcess(bus: bus, configPath: configPath, arguments: ["--runner", "process"])
            try await withCleanup(daemon, cleanup: { await $0.process.terminate(grace: .seconds(10)) }) { daemon in
                let manager = ["--object-path", "/org/example/BgWorker"]
                let worker = ["--object-path", "/org/example/BgWorker/worker/dice"]
                let reads: [[String]] = [
                    manager + ["--method", "org.example.BgWorker.ListWorkers"],
                    manager + ["--method", "org.example.BgWorker.GetWorker", "dice"],
                    manager + ["--method", "org.example.BgWorker.ListInhibitors"],
                    manager + ["--method", "org.freedesktop.DBus.Properties.Get", "org.example.BgWorker", "Version"],
                    manager + ["--method", "org.freedesktop.DBus.Properties.GetAll", "org.example.BgWorker"],
                    worker + ["--method", "org.freedesktop.DBus.Properties.GetAll", "org.example.BgWorker.Worker"],
                    manager + ["--method", "org.freedesktop.DBus.ObjectManager.GetManagedObjects"],
                    manager + ["--method", "org.freedesktop.DBus.Introspectable.Introspect"],
                    manager + ["--method", "org.freedesktop.DBus.Peer.Ping"],
                ]
                for read in reads {
                    let r = try await Self.gdbus(as: nobody, on: bus, read)
                    #expect(r.status == 0, "nobody may \(read.joined(separator: " ")): \(r.stderr)")
                }

                // In an order in which each succeeds for a caller who may: the worker runs throughout,
                // but for the Disable/Enable pairs.
                let changes: [[String]] = [
                    manager + ["--method", "org.example.BgWorker.Restart", "dice"],
                    manager + ["--method", "org.example.BgWorker.Reload"],
                    worker + ["--method", "org.example.BgWorker.Worker.Restart"],
                    worker + ["--method", "org.example.BgWorker.Worker.Disable"],
                    worker + ["--method", "org.example.BgWorker.Worker.Enable"],
                    manager + ["--method", "org.example.BgWorker.Disable", "dice"],
                    manager + ["--method", "org.example.BgWorker.Enable", "dice"],
                    manager + ["--method", "org.freedesktop.DBus.Properties.Set", "org.example.BgWorker", "LogLevel", "<'debug'>"],
                    // gdbus holds the inhibitor until it exits, just after the reply.
                    manager + ["--method", "org.example.BgWorker.Inhibit", "policy-test", "a check"],
                ]
                for change in changes {
                    let refused = try await Self.gdbus(as: nobody, on: bus, change)
                    #expect(refused.status != 0 && refused.stderr.contains("AccessDenied")
                                && refused.stderr.contains("Rejected send message"),
                            "the bus must refuse nobody: \(change.joined(separator: " ")): \(refused.stderr)")
                }
                for (who, caller) in [("the admin group", admin), ("root", nil)] {
                    for change in changes {
                        let allowed = try await Self.gdbus(as: caller, on: bus, change)
                        #expect(allowed.status == 0, "\(who) may \(change.joined(separator: " ")): \(allowed.stderr)")
                    }
                }
                // A member outside the policy is refused to the admin group too.
                let other = try await Self.gdbus(as: admin, on: bus, manager + ["--method", "org.example.BgWorker.Shutdown"])
                #expect(other.stderr.contains("Rejected send message"), "\(other.stderr)")
                #expect(!daemon.process.hasExited, "bgworkerd runs on: \(daemon.log)")
            }
        }
    }

    /// Issue 12: bgworkerd is not bus-activatable, so that a read after `systemctl stop` never
    /// starts it again (docs/bgworkerctl.md, "A stopped daemon stays stopped").
    @Test func noBusActivationFileIsShipped() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: "\(Self.root)/dbus")
        #expect(!files.contains { $0.hasSuffix(".service") }, "\(files)")
        let unit = try String(contentsOfFile: "\(Self.root)/config/bgworkerd.service", encoding: .utf8)
        #expect(!unit.contains("Alias=dbus-org.example.BgWorker"), "no activation alias either")
    }

    // MARK: configuration and unit

    @Test func exampleConfigurationParsesAndValidates() throws {
        let mainPath = "\(Self.root)/config/bgworkerd.toml"
        let main = SourceFile(path: mainPath, text: try String(contentsOfFile: mainPath, encoding: .utf8))
        let dropInDirectory = "\(Self.root)/config/workers.d"
        let dropIns = try FileManager.default.contentsOfDirectory(atPath: dropInDirectory)
            .filter { $0.hasSuffix(".toml") }.sorted()
            .map { SourceFile(path: "\(dropInDirectory)/\($0)", text: try String(contentsOfFile: "\(dropInDirectory)/\($0)", encoding: .utf8)) }
        #expect(!dropIns.isEmpty)
        let configuration = try Configuration.parse(main: main, dropIns: dropIns).get()
        #expect(configuration.workers.map(\.name) == ["dice", "heartbeat", "standby-sync"])
        let dice = try #require(configuration.worker(named: "dice"))
        #expect(dice.exec == ["/usr/libexec/bgworker/bgworker-example", "--die-one-in", "10"])
        #expect(dice.runOn == .primary && dice.environment == ["EXAMPLE": "1"])
        #expect(configuration.ha.source == .keepalived(instance: "/org/keepalived/Vrrp1/Instance/eth0/51/IPv4"))
        #expect(configuration.daemon.adminGroup == "bgworker-admin")
        for runner in [RunnerKind.process, .systemd] {
            #expect(configuration.validate(for: runner).isEmpty)
        }
    }

    @Test(.enabled(if: which("systemd-analyze") != nil || isCI, "needs systemd-analyze"))
    func systemdUnitVerifies() async throws {
        // systemd-analyze also checks that ExecStart exists; /usr/bin/bgworkerd is not installed
        // on a build machine, so a copy with ExecStart=/bin/true is verified, and the original is
        // checked to differ only there.
        let directory = try TemporaryDirectory(prefix: "bgw-unit")
        defer { directory.remove() }
        let unit = try String(contentsOfFile: "\(Self.root)/config/bgworkerd.service", encoding: .utf8)
        #expect(unit.contains("\nExecStart=/usr/bin/bgworkerd\n"))
        try unit.replacingOccurrences(of: "\nExecStart=/usr/bin/bgworkerd\n", with: "\nExecStart=/bin/true\n")
            .write(toFile: directory.file("bgworkerd.service"), atomically: true, encoding: .utf8)
        let r = try await run(["systemd-analyze", "verify", "--man=no", directory.file("bgworkerd.service")])
        #expect(r.status == 0 && r.stderr.isEmpty, "\(r.stderr)")
        for line in ["Type=notify", "BusName=org.example.BgWorker", "ExecReload=/bin/kill -HUP $MAINPID",
                     "KillMode=mixed", "StateDirectory=bgworker", "RuntimeDirectory=bgworker", "Restart=on-failure"] {
            #expect(unit.contains("\n\(line)\n"), "missing \(line)")
        }
        #expect(unit.contains("\nWatchdogSec="))
    }

    /// The unit is hardened for the systemd runner (issue 13: exposure at most 3.0), and with the
    /// process runner's drop-in it still verifies and gives the workers back what they need.
    @Test(.enabled(if: which("systemd-analyze") != nil || isCI, "needs systemd-analyze"))
    func hardenedUnitAndItsProcessRunnerDropInVerify() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-unit")
        defer { directory.remove() }
        let unit = try String(contentsOfFile: "\(Self.root)/config/bgworkerd.service", encoding: .utf8)
            .replacingOccurrences(of: "\nExecStart=/usr/bin/bgworkerd\n", with: "\nExecStart=/bin/true\n")
        try unit.write(toFile: directory.file("bgworkerd.service"), atomically: true, encoding: .utf8)
        let security = try await run(["systemd-analyze", "security", "--offline=true", "--threshold=30",
                                      directory.file("bgworkerd.service")])
        #expect(security.status == 0, "exposure above 3.0:\n\(security.stdout)\(security.stderr)")
        let overall = security.stdout.split(separator: "\n").last { $0.contains("Overall exposure level") }
        let score = overall.flatMap { line in line.split(separator: " ").compactMap { Double($0) }.last }
        #expect(score.map { $0 <= 3.0 } == true, "\(overall ?? "no score")")

        try FileManager.default.createDirectory(atPath: directory.file("bgworkerd.service.d"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "\(Self.root)/config/bgworkerd.service.d/process-runner.conf",
                                         toPath: directory.file("bgworkerd.service.d/process-runner.conf"))
        let verify = try await run(["systemd-analyze", "verify", "--man=no", directory.file("bgworkerd.service")])
        #expect(verify.status == 0 && verify.stderr.isEmpty, "\(verify.stderr)")
        let relaxed = try await run(["systemd-analyze", "security", "--offline=true", directory.file("bgworkerd.service")])
        for line in relaxed.stdout.split(separator: "\n") where line.contains("CAP_SET(UID|GID|PCAP)") || line.contains("NoNewPrivileges=") {
            #expect(line.hasPrefix("✗"), "the drop-in must give process-runner workers this back: \(line)")
        }
    }

    /// What the package installs as /etc/bgworker/bgworkerd.toml runs nothing and follows no HA
    /// source until the admin says so.
    @Test func installedDefaultConfigurationRunsNothing() throws {
        let path = "\(Self.root)/config/default/bgworkerd.toml"
        let main = SourceFile(path: path, text: try String(contentsOfFile: path, encoding: .utf8))
        let configuration = try Configuration.parse(main: main).get()
        #expect(configuration.workers.isEmpty)
        #expect(configuration.ha.source == .none)
        var expected = DaemonSettings()
        expected.adminGroup = "bgworker-admin"  // the group the package creates and the bus policy names
        #expect(configuration.daemon == expected)
    }
}

extension ShippedFilesTests {
    @Test func demoConfigurationIsValidAndPointsAtTheBuiltWorker() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-demo")
        defer { directory.remove() }
        let bin = "/nonexistent/bin"
        let r = try await run(["bash", "-c",
                               "cd \"$1\" && source scripts/lib/demo-config.sh && write_demo_config \"$2\" \"$3\" staff",
                               "bash", Self.root, directory.path, bin])
        #expect(r.status == 0, "\(r.stderr)")
        let mainPath = directory.file("bgworkerd.toml")
        let main = SourceFile(path: mainPath, text: try String(contentsOfFile: mainPath, encoding: .utf8))
        let dropIns = try FileManager.default.contentsOfDirectory(atPath: directory.file("workers.d")).sorted().map {
            SourceFile(path: $0, text: try String(contentsOfFile: directory.file("workers.d/\($0)"), encoding: .utf8))
        }
        let configuration = try Configuration.parse(main: main, dropIns: dropIns).get()
        #expect(configuration.ha.source == .none)
        #expect(configuration.daemon.stateDirectory == directory.file("state"))
        #expect(configuration.daemon.adminGroup == "staff")
        #expect(!configuration.workers.isEmpty)
        for worker in configuration.workers { #expect(worker.exec[0] == "\(bin)/bgworker-example") }
    }
}

extension ShippedFilesTests {
    /// Issue 12: the demo's bus lets root monitor (the README's `busctl monitor` line), and the
    /// demo tells a live demo's bus (refused) from a stale socket (reused).
    @Test(.enabled(if: rootTestsEnabled, "needs root: only root may become a monitor"))
    func demoBusLetsRootMonitorAndALiveDemoIsRecognised() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-demo-bus")
        defer { directory.remove() }
        let socket = directory.file("bus.sock")
        func shell(_ script: String) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await run(["bash", "-c", "cd \"$1\" && source scripts/lib/demo-config.sh && " + script, "bash", Self.root,
                           directory.file("bus.conf"), socket])
        }
        #expect(try await shell("write_demo_bus_config \"$2\" \"$3\" \"$PWD\" \"$(id -un)\"").status == 0)
        #expect(try await shell("demo_bus_is_live \"$3\"").status == 1, "no socket: no demo")
        let bus = try ChildProcess(["dbus-daemon", "--config-file=\(directory.file("bus.conf"))", "--nofork", "--print-address=1"],
                                   captureStdout: true)
        _ = try await bus.readLine(timeout: .seconds(20))
        #expect(try await shell("demo_bus_is_live \"$3\"").status == 0, "a live demo")
        let monitor = try await run(["busctl", "--address=unix:path=\(socket)", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus.Monitoring", "BecomeMonitor", "asu", "0", "0"])
        #expect(monitor.status == 0, "root may monitor: \(monitor.stderr)")
        bus.signal(SIGKILL)
        _ = try await bus.waitForExit()
        #expect(access(socket, F_OK) == 0, "the killed bus left its socket")
        let stale = try await shell("demo_bus_is_live \"$3\"")
        #expect(stale.status == 1, "a stale socket: no demo")
    }
}
