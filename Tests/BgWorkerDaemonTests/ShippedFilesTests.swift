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
            Member(kind: "signal", name: "WorkerStateChanged", detail: ["name:s", "state:s", "pid:u", "reason:s"]),
            Member(kind: "signal", name: "HARoleChanged", detail: ["role:s"]),
            Member(kind: "property", name: "Version", detail: ["s", "read"]),
            Member(kind: "property", name: "HARole", detail: ["s", "read"]),
            Member(kind: "property", name: "LogLevel", detail: ["s", "readwrite"]),
            Member(kind: "property", name: "Runner", detail: ["s", "read"]),
        ]
        #expect(try Self.members(ofInterface: "org.example.BgWorker", inFile: "org.example.BgWorker.xml") == expected)
        let annotations = try Self.changeSignalAnnotations(inFile: "org.example.BgWorker.xml")
        #expect(annotations == ["Version": "const", "HARole": "true", "LogLevel": "true", "Runner": "true"])
    }

    @Test func workerInterfaceMatchesTheContract() throws {
        let properties: [(String, String)] = [
            ("Name", "s"), ("State", "s"), ("Enabled", "b"), ("Pid", "u"), ("Restarts", "u"),
            ("LastExit", "s"), ("RunOn", "s"), ("StateChangedAt", "t"),
        ]
        let expected = ["Enable", "Disable", "Restart"].map { Member(kind: "method", name: $0, detail: []) }
            + properties.map { Member(kind: "property", name: $0.0, detail: [$0.1, "read"]) }
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

    /// STAND-IN, not the daemon: a tiny python3-dbus program that owns org.example.BgWorker (as
    /// root) and answers the member names the policy mentions, so that the policy file can be
    /// tested before bgworkerd exists. It is not a mock of any behaviour; only the bus's
    /// decisions are under test. Replace it with bgworkerd once the daemon runs.
    static let policyStandIn = """
        import sys
        import dbus, dbus.service, dbus.mainloop.glib
        from gi.repository import GLib
        dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
        bus = dbus.bus.BusConnection(sys.argv[1])
        M, W, P = "org.example.BgWorker", "org.example.BgWorker.Worker", "org.freedesktop.DBus.Properties"
        def log(*a): print(*a, flush=True)
        class Manager(dbus.service.Object):
            props = {"Version": "stand-in", "HARole": "standalone", "LogLevel": "info", "Runner": "process"}
            @dbus.service.method(M, in_signature="s")
            def Enable(self, name): log("called Enable", name)
            @dbus.service.method(M, in_signature="s")
            def Disable(self, name): log("called Disable", name)
            @dbus.service.method(M, in_signature="s")
            def Restart(self, name): log("called Restart", name)
            @dbus.service.method(M)
            def Reload(self): log("called Reload")
            @dbus.service.method(M, out_signature="a(ssbuo)")
            def ListWorkers(self):
                return [("dice", "running", True, dbus.UInt32(42), dbus.ObjectPath("/org/example/BgWorker/worker/dice"))]
            @dbus.service.method(M, in_signature="s", out_signature="o")
            def GetWorker(self, name): return dbus.ObjectPath("/org/example/BgWorker/worker/dice")
            @dbus.service.method(P, in_signature="ss", out_signature="v")
            def Get(self, iface, prop): return self.props[prop]
            @dbus.service.method(P, in_signature="s", out_signature="a{sv}")
            def GetAll(self, iface): return self.props
            @dbus.service.method(P, in_signature="ssv")
            def Set(self, iface, prop, value):
                log("called Set", prop)
                self.props[prop] = str(value)
            @dbus.service.method("org.freedesktop.DBus.ObjectManager", out_signature="a{oa{sa{sv}}}")
            def GetManagedObjects(self):
                return {dbus.ObjectPath("/org/example/BgWorker/worker/dice"): {W: {"Name": "dice"}}}
        class Worker(dbus.service.Object):
            @dbus.service.method(W)
            def Enable(self): log("called Worker.Enable")
            @dbus.service.method(W)
            def Disable(self): log("called Worker.Disable")
            @dbus.service.method(W)
            def Restart(self): log("called Worker.Restart")
        Manager(bus, "/org/example/BgWorker")
        Worker(bus, "/org/example/BgWorker/worker/dice")
        name = dbus.service.BusName(M, bus, do_not_queue=True)
        log("ready")
        GLib.MainLoop().run()
        """

    /// A caller as another user, with a real client: `setpriv ... busctl --address=... ARGS`.
    static func busctl(as user: (uid: Int, gid: Int, groups: [Int])?, on bus: PrivateBus, _ arguments: [String]) async throws
        -> (status: Int32, stdout: String, stderr: String)
    {
        var argv = ["busctl", "--address=\(bus.unixAddress)"] + arguments
        if let user {
            let groups = user.groups.isEmpty ? ["--clear-groups"] : ["--groups=\(user.groups.map(String.init).joined(separator: ","))"]
            argv = ["setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)"] + groups + argv
        }
        return try await run(argv)
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: the policy lets only root own the name, and callers switch users"),
          .timeLimit(.minutes(1)))
    func busPolicyLetsEveryoneReadAndOnlyRootAndAdminsChangeState() async throws {
        // The shipped policy with its admin group renamed to one that exists on every Debian
        // machine ("users", gid 100), so the group rule is exercised without creating a group.
        let directory = try TemporaryDirectory(prefix: "bgw-policy")
        defer { directory.remove() }
        let shipped = try String(contentsOfFile: "\(Self.root)/dbus/org.example.BgWorker.conf", encoding: .utf8)
        #expect(shipped.contains("group=\"bgworker-admin\""))
        let policyFile = directory.file("org.example.BgWorker.conf")
        try shipped.replacingOccurrences(of: "group=\"bgworker-admin\"", with: "group=\"users\"")
            .write(toFile: policyFile, atomically: true, encoding: .utf8)
        let bus = try await PrivateBus(policy: PrivateBus.systemBusPolicy(including: [policyFile]))
        defer { Task { await bus.stop() } }

        // Nobody but root may own the name.
        let nobody = (uid: 65534, gid: 65534, groups: [Int]())
        let admin = (uid: 65534, gid: 65534, groups: [100])
        let ownAsNobody = try await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                         "/usr/bin/python3", "-c",
                                         "import dbus,sys; b=dbus.bus.BusConnection(sys.argv[1]); b.request_name('org.example.BgWorker')",
                                         bus.unixAddress])
        #expect(ownAsNobody.status != 0 && ownAsNobody.stderr.contains("AccessDenied"), "\(ownAsNobody.stderr)")

        let standIn = try ChildProcess(["/usr/bin/python3", "-c", Self.policyStandIn, bus.unixAddress],
                                       captureStdout: true, logFile: directory.file("stand-in.log"))
        defer { standIn.signal(SIGKILL) }
        let ready = try await standIn.readLine(timeout: .seconds(20))
        #expect(ready == "ready", "stand-in: \((try? String(contentsOfFile: directory.file("stand-in.log"), encoding: .utf8)) ?? "")")

        let manager = ["org.example.BgWorker", "/org/example/BgWorker"]
        let reads: [[String]] = [
            ["call"] + manager + ["org.example.BgWorker", "ListWorkers"],
            ["call"] + manager + ["org.example.BgWorker", "GetWorker", "s", "dice"],
            ["get-property"] + manager + ["org.example.BgWorker", "Version"],
            ["call"] + manager + ["org.freedesktop.DBus.Properties", "GetAll", "s", "org.example.BgWorker"],
            ["call"] + manager + ["org.freedesktop.DBus.ObjectManager", "GetManagedObjects"],
            ["call"] + manager + ["org.freedesktop.DBus.Introspectable", "Introspect"],
        ]
        for read in reads {
            let r = try await Self.busctl(as: nobody, on: bus, read)
            #expect(r.status == 0, "nobody may \(read.joined(separator: " ")): \(r.stderr)")
        }

        let changes: [[String]] = [
            ["call"] + manager + ["org.example.BgWorker", "Enable", "s", "dice"],
            ["call"] + manager + ["org.example.BgWorker", "Disable", "s", "dice"],
            ["call"] + manager + ["org.example.BgWorker", "Restart", "s", "dice"],
            ["call"] + manager + ["org.example.BgWorker", "Reload"],
            ["call", "org.example.BgWorker", "/org/example/BgWorker/worker/dice", "org.example.BgWorker.Worker", "Enable"],
            ["call", "org.example.BgWorker", "/org/example/BgWorker/worker/dice", "org.example.BgWorker.Worker", "Disable"],
            ["call", "org.example.BgWorker", "/org/example/BgWorker/worker/dice", "org.example.BgWorker.Worker", "Restart"],
            ["set-property"] + manager + ["org.example.BgWorker", "LogLevel", "s", "debug"],
        ]
        for change in changes {
            // The stand-in never denies anything, so an AccessDenied here comes from the bus.
            let refused = try await Self.busctl(as: nobody, on: bus, change)
            #expect(refused.status != 0 && refused.stderr.contains("Access denied"),
                    "the bus must refuse nobody: \(change.joined(separator: " ")): \(refused.stderr)")
            for caller in [admin, nil] {
                let allowed = try await Self.busctl(as: caller, on: bus, change)
                #expect(allowed.status == 0,
                        "\(caller == nil ? "root" : "the admin group") may \(change.joined(separator: " ")): \(allowed.stderr)")
            }
        }
        // A member outside the policy is refused even to the admin group.
        let other = try await Self.busctl(as: admin, on: bus, ["call"] + manager + ["org.example.BgWorker", "Shutdown"])
        #expect(other.stderr.contains("Access denied"), "\(other.stderr)")

        // The stand-in saw each change exactly twice (admin, root): none of nobody's got through.
        standIn.signal(SIGTERM)
        var calls: [String] = []
        while let line = try await standIn.readLine(timeout: .seconds(10)) { calls.append(line) }
        #expect(calls.count == changes.count * 2, "calls that reached the name owner: \(calls)")
    }

    @Test func busActivationFileNamesTheDaemonAndItsUnit() throws {
        let text = try String(contentsOfFile: "\(Self.root)/dbus/org.example.BgWorker.service", encoding: .utf8)
        let lines = Set(text.split(separator: "\n").map(String.init))
        for line in ["[D-BUS Service]", "Name=org.example.BgWorker", "Exec=/usr/bin/bgworkerd", "User=root",
                     "SystemdService=bgworkerd.service"] {
            #expect(lines.contains(line), "missing \(line)")
        }
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
