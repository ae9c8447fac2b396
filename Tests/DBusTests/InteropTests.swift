import DBus
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
import TestSupport

/// Our exported objects, called by clients no one here wrote: busctl, gdbus, dbus-send and
/// python3-dbus.
@Suite struct InteropTests {
    static let name = "org.example.Interop"

    /// A server with the test object below an ObjectManager root, owning `name`.
    struct Server {
        let fx: BusFixture
        let connection: DBusConnection
        let object: ExportedObject
        var address: String { fx.bus.unixAddress }

        static func start() async throws -> Server {
            let fx = try await BusFixture.start()
            let connection = try await fx.connect()
            try connection.export(try ExportedObject(path: try ObjectPath("/org/example"), interfaces: [], objectManager: true))
            let object = try TestObject.make()
            try connection.export(object)
            _ = try await connection.requestName(InteropTests.name)
            return Server(fx: fx, connection: connection, object: object)
        }

        func stop() async {
            connection.close()
            await fx.stop()
        }
    }

    static func withServer(_ body: (Server) async throws -> Void) async throws {
        let server = try await Server.start()
        do {
            try await body(server)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    /// Runs a client; returns stdout, expecting success.
    static func ok(_ argv: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
        let r = try await run(argv)
        #expect(r.status == 0, "\(argv.joined(separator: " ")): \(r.stderr)", sourceLocation: sourceLocation)
        return r.stdout
    }

    /// Runs a client expected to fail; returns stderr.
    static func fails(_ argv: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
        let r = try await run(argv)
        #expect(r.status != 0, "\(argv.joined(separator: " ")) succeeded: \(r.stdout)", sourceLocation: sourceLocation)
        return r.stderr
    }

    static func requireTool(_ tool: String) throws {
        try #require(which(tool) != nil || isCI, "\(tool) is not installed")
    }

    // MARK: busctl

    @Test func busctl() async throws {
        try Self.requireTool("busctl")
        try await Self.withServer { s in
            let base = ["busctl", "--address=\(s.address)"]
            let call = base + ["call", Self.name, TestObject.path.rawValue, TestObject.interface]
            #expect(try await Self.ok(call + ["Add", "ii", "40", "2"]) == "i 42")
            #expect(try await Self.ok(call + ["Concat", "ass", "3", "a", "b", "c", "-"]) == "s \"a-b-c\"")
            let described = try await Self.ok(call + ["Describe", "a{sv}", "2", "z", "s", "x", "a", "i", "1"])
            #expect(described == "asu 2 \"a\" \"z\" 2")
            #expect(try await Self.ok(call + ["Echo", "v", "(is)", "1", "x"]) == "v (is) 1 \"x\"")
            #expect(try await Self.ok(call + ["Echo", "v", "a{sv}", "1", "k", "t", "3"]) == "v a{sv} 1 \"k\" t 3")
            #expect(try await Self.ok(base + ["get-property", Self.name, TestObject.path.rawValue, TestObject.interface, "Name"]) == "s \"test\"")
            _ = try await Self.ok(base + ["set-property", Self.name, TestObject.path.rawValue, TestObject.interface, "Count", "u", "5"])
            #expect(s.object.property(TestObject.interface, "Count") == .uint32(5))
            _ = try await Self.fails(base + ["set-property", Self.name, TestObject.path.rawValue, TestObject.interface, "Name", "s", "x"])
            let wrong = try await Self.fails(call + ["Add", "ss", "1", "2"])
            #expect(wrong.contains("expected 'ii'"))

            // JSON: GetManagedObjects lists the object with its properties.
            let json = try await Self.ok(base + ["--json=short", "call", Self.name, "/org/example", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"])
            let top = try JSONDecoder().decode([String: BusValue].self, from: Data(json.utf8))
            #expect(top["type"] == .string("a{oa{sa{sv}}}"))
            guard case .object(let objects)? = top["data"]?.array?.first,
                  case .object(let ifaces)? = objects[TestObject.path.rawValue],
                  case .object(let props)? = ifaces[TestObject.interface] else {
                Issue.record("GetManagedObjects: \(json)")
                return
            }
            #expect(props["Name"]?.unwrapped == .string("test"))
            #expect(props["Count"]?.unwrapped.uint32 == 5)

            // introspect: the table lists our members as declared.
            let table = try await Self.ok(base + ["introspect", Self.name, TestObject.path.rawValue, TestObject.interface])
            let rows = table.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
            #expect(rows.contains { $0.starts(with: [".Add", "method", "ii", "i"]) })
            #expect(rows.contains { $0.starts(with: [".Describe", "method", "a{sv}", "asu"]) })
            #expect(rows.contains { $0.starts(with: [".Count", "property", "u", "5", "emits-change", "writable"]) })
            #expect(rows.contains { $0.starts(with: [".Pong", "signal", "s"]) })
            let xml = try await Self.ok(base + ["--xml-interface", "introspect", Self.name, TestObject.path.rawValue])
            let parsed = try IntrospectionDocument(xml)
            #expect(parsed.members[TestObject.interface]?.isSuperset(of: ["method Add", "method Echo", "property Count", "property Name", "signal Pong"]) == true)
            #expect(parsed.interfaces.isSuperset(of: ["org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer"]))
            let tree = try await Self.ok(base + ["tree", Self.name])
            #expect(tree.contains("/org/example/Test"))

            // Signals and PropertiesChanged, seen by busctl monitor.
            let monitor = try await BusMonitor(address: s.address, matches: ["type='signal',sender='\(Self.name)'"])
            try s.object.emitSignal(interface: TestObject.interface, member: "Pong", arguments: [.string("busctl")])
            try s.object.setProperty(TestObject.interface, "Count", .uint32(6))
            let pong = try await monitor.waitFor("Pong") { $0.member == "Pong" }
            #expect(pong.body == [.string("busctl")])
            let changed = try await monitor.waitFor("PropertiesChanged") { $0.member == "PropertiesChanged" }
            #expect(changed.body.first == .string(TestObject.interface))
            await monitor.stop()
        }
    }

    // MARK: gdbus

    @Test func gdbus() async throws {
        try Self.requireTool("gdbus")
        try await Self.withServer { s in
            let call = ["gdbus", "call", "--address", s.address, "--dest", Self.name, "--object-path", TestObject.path.rawValue, "--method"]
            let t = TestObject.interface
            let props = "org.freedesktop.DBus.Properties"
            #expect(try await Self.ok(call + ["\(t).Add", "40", "2"]) == "(42,)")
            #expect(try await Self.ok(call + ["\(t).Concat", "['a', 'b']", "+"]) == "('a+b',)")
            #expect(try await Self.ok(call + ["\(t).Describe", "{'z': <1>, 'a': <'x'>}"]) == "(['a', 'z'], uint32 2)")
            #expect(try await Self.ok(call + ["\(t).Echo", "<(byte 1, [int64 -3], {'k': <true>})>"]) == "(<(byte 0x01, [int64 -3], {'k': <true>})>,)")
            #expect(try await Self.ok(call + ["\(props).Get", t, "Name"]) == "(<'test'>,)")
            _ = try await Self.ok(call + ["\(props).Set", t, "Count", "<uint32 11>"])
            #expect(s.object.property(t, "Count") == .uint32(11))
            _ = try await Self.ok(call + ["\(props).Set", t, "Options", "<{'x': <'y'>}>"])
            #expect(s.object.property(t, "Options") == .variantDictionary(["x": .string("y")]))
            let all = try await Self.ok(call + ["\(props).GetAll", t])
            #expect(all.contains("'Count': <uint32 11>"))

            #expect(try await Self.fails(call + ["\(props).Set", t, "Name", "<'x'>"]).contains("org.freedesktop.DBus.Error.PropertyReadOnly"))
            #expect(try await Self.fails(call + ["\(props).Set", t, "Count", "<'x'>"]).contains("org.freedesktop.DBus.Error.InvalidArgs"))
            #expect(try await Self.fails(call + ["\(props).Set", t, "Level", "<'loud'>"]).contains("org.freedesktop.DBus.Error.InvalidArgs"))
            #expect(try await Self.fails(call + ["\(props).Get", t, "Nope"]).contains("org.freedesktop.DBus.Error.UnknownProperty"))
            #expect(try await Self.fails(call + ["\(t).Nope"]).contains("org.freedesktop.DBus.Error.UnknownMethod"))
            #expect(try await Self.fails(call + ["org.example.Nope.Add", "1", "2"]).contains("org.freedesktop.DBus.Error.UnknownInterface"))
            #expect(try await Self.fails(call + ["\(t).Fail", "org.example.Test.Error.Mine", "mine"]).contains("org.example.Test.Error.Mine: mine"))
            let elsewhere = ["gdbus", "call", "--address", s.address, "--dest", Self.name, "--object-path", "/nowhere", "--method", "\(t).Add", "1", "2"]
            #expect(try await Self.fails(elsewhere).contains("org.freedesktop.DBus.Error.UnknownObject"))

            let managed = try await Self.ok(["gdbus", "call", "--address", s.address, "--dest", Self.name, "--object-path", "/org/example",
                                             "--method", "org.freedesktop.DBus.ObjectManager.GetManagedObjects"])
            #expect(managed.contains("objectpath '/org/example/Test'"))
            #expect(managed.contains("'Name': <'test'>"))

            let xml = try await Self.ok(["gdbus", "introspect", "--address", s.address, "--dest", Self.name, "--object-path", TestObject.path.rawValue, "--xml"])
            let parsed = try IntrospectionDocument(xml)
            #expect(parsed.members[t]?.isSuperset(of: ["method Describe", "property Level", "signal Everything"]) == true)

            // Signals. gdbus reports the owner before its AddMatch is surely processed, so watch
            // the bus for that AddMatch (a monitor's copy is made as the bus handles it). Monitor
            // our unique name: for a well-known one GLib (CVE-2024-34397 fix) also drops signals
            // until a lookup of its own answers. gdbus writes to a pipe through stdio: line-buffer.
            let unique = s.connection.uniqueName ?? ""
            let addMatches = try await BusMonitor(address: s.address, matches: ["type='method_call',interface='org.freedesktop.DBus',member='AddMatch'"])
            let monitor = try ChildProcess(["stdbuf", "-oL", "gdbus", "monitor", "--address", s.address, "--dest", unique], captureStdout: true)
            _ = try await addMatches.waitFor("gdbus' AddMatch") { m in
                m.body.first?.string.map { $0.contains("sender='\(unique)'") && !$0.contains("NameOwnerChanged") } == true
            }
            await addMatches.stop()
            try s.object.emitSignal(interface: t, member: "Pong", arguments: [.string("gdbus")])
            try s.object.setProperty(t, "Count", .uint32(12))
            _ = try await monitor.readLine(until: { $0.contains("\(t).Pong ('gdbus',)") })
            _ = try await monitor.readLine(until: { $0.contains("PropertiesChanged ('\(t)', {'Count': <uint32 12>}") })
            await monitor.terminate(grace: .seconds(1))
        }
    }

    // MARK: dbus-send (and dbus-monitor for signals)

    @Test func dbusSend() async throws {
        try Self.requireTool("dbus-send")
        try await Self.withServer { s in
            let send = ["dbus-send", "--bus=\(s.address)", "--print-reply=literal", "--dest=\(Self.name)", TestObject.path.rawValue]
            let t = TestObject.interface
            let props = "org.freedesktop.DBus.Properties"
            func trimmed(_ s: String) -> String { s.trimmingCharacters(in: .whitespacesAndNewlines) }
            #expect(trimmed(try await Self.ok(send + ["\(t).Add", "int32:40", "int32:2"])) == "int32 42")
            #expect(trimmed(try await Self.ok(send + ["\(t).Concat", "array:string:a,b", "string:/"])) == "a/b")
            #expect(trimmed(try await Self.ok(send + ["\(t).Echo", "variant:double:2.5"])) == "variant       double 2.5")
            #expect(trimmed(try await Self.ok(send + ["\(props).Get", "string:\(t)", "string:Name"])) == "variant       test")
            _ = try await Self.ok(send + ["\(props).Set", "string:\(t)", "string:Count", "variant:uint32:21"])
            #expect(s.object.property(t, "Count") == .uint32(21))
            _ = try await Self.ok(send + ["\(props).Set", "string:\(t)", "string:Level", "variant:string:error"])
            #expect(s.object.property(t, "Level") == .string("error"))
            #expect(try await Self.fails(send + ["\(props).Set", "string:\(t)", "string:Name", "variant:string:x"]).contains("org.freedesktop.DBus.Error.PropertyReadOnly"))
            #expect(try await Self.fails(send + ["\(t).Add", "string:1", "int32:2"]).contains("org.freedesktop.DBus.Error.InvalidArgs"))
            #expect(try await Self.fails(send + ["\(t).Missing"]).contains("org.freedesktop.DBus.Error.UnknownMethod"))
            let managed = try await Self.ok(["dbus-send", "--bus=\(s.address)", "--print-reply", "--dest=\(Self.name)", "/org/example",
                                             "org.freedesktop.DBus.ObjectManager.GetManagedObjects"])
            #expect(managed.contains("object path \"/org/example/Test\""))
            let xml = try await Self.ok(send + ["org.freedesktop.DBus.Introspectable.Introspect"])
            #expect(try IntrospectionDocument(xml).members[t]?.contains("method Concat") == true)

            // dbus-monitor reports NameLost once it is a monitor: from then on nothing is missed.
            let monitor = try ChildProcess(["dbus-monitor", "--address", s.address, "type='signal',sender='\(Self.name)'"], captureStdout: true)
            _ = try await monitor.readLine(until: { $0.contains("member=NameLost") })
            try s.object.emitSignal(interface: t, member: "Pong", arguments: [.string("dbus-monitor")])
            try s.object.setProperty(t, "Count", .uint32(22))
            _ = try await monitor.readLine(until: { $0.contains("member=Pong") })
            _ = try await monitor.readLine(until: { $0.contains("string \"dbus-monitor\"") })
            _ = try await monitor.readLine(until: { $0.contains("member=PropertiesChanged") })
            _ = try await monitor.readLine(until: { $0.contains("uint32 22") })
            await monitor.terminate(grace: .seconds(1))
        }
    }

    // MARK: python3-dbus

    static let pythonClient = #"""
        import sys, json, dbus, dbus.mainloop.glib
        from gi.repository import GLib
        dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
        bus = dbus.bus.BusConnection(sys.argv[1])
        name, path, iface = "org.example.Interop", "/org/example/Test", "org.example.Test"
        obj = bus.get_object(name, path)
        t = dbus.Interface(obj, iface)
        props = dbus.Interface(obj, "org.freedesktop.DBus.Properties")
        out = {}
        out["add"] = int(t.Add(dbus.Int32(40), dbus.Int32(2)))
        out["concat"] = str(t.Concat(["x", "y"], "."))
        keys, count = t.Describe({"b": dbus.Int32(1), "a": "s", "c": dbus.Array([1.5], signature="d")}, signature="a{sv}")
        out["describe"] = [[str(k) for k in keys], int(count)]
        echoed = t.Echo(dbus.Struct((dbus.Byte(7), dbus.Array([dbus.ObjectPath("/a")], signature="o")), signature=None), signature="v")
        out["echo"] = [int(echoed[0]), [str(p) for p in echoed[1]]]
        out["name"] = str(props.Get(iface, "Name"))
        props.Set(iface, "Count", dbus.UInt32(31))
        out["count"] = int(props.Get(iface, "Count"))
        out["all"] = sorted(str(k) for k in props.GetAll(iface).keys())
        errors = {}
        for label, fn in [("readonly", lambda: props.Set(iface, "Name", "x")),
                          ("wrongtype", lambda: props.Set(iface, "Count", "x")),
                          ("unknownprop", lambda: props.Get(iface, "Nope")),
                          ("wrongargs", lambda: t.Add("1", "2", signature="ss")),
                          ("unknownmethod", lambda: t.Nope()),
                          ("custom", lambda: t.Fail("org.example.Test.Error.Py", "py"))]:
            try:
                fn()
                errors[label] = None
            except dbus.exceptions.DBusException as e:
                errors[label] = e.get_dbus_name()
        out["errors"] = errors
        managed = dbus.Interface(bus.get_object(name, "/org/example"), "org.freedesktop.DBus.ObjectManager").GetManagedObjects()
        out["managed"] = sorted(str(p) for p in managed.keys())
        seen = {}
        loop = GLib.MainLoop()
        def on_pong(tag, sender=None):
            seen["pong"] = str(tag); seen["sender"] = str(sender)
            maybe_done()
        def on_changed(interface, changed, invalidated):
            if "Count" in changed:
                seen["changed"] = int(changed["Count"])
                maybe_done()
        def maybe_done():
            if "pong" in seen and "changed" in seen:
                loop.quit()
        bus.add_signal_receiver(on_pong, "Pong", iface, name, path, sender_keyword="sender")
        bus.add_signal_receiver(on_changed, "PropertiesChanged", "org.freedesktop.DBus.Properties", name, path)
        t.Ping("python")                               # the server emits Pong
        props.Set(iface, "Count", dbus.UInt32(32))     # PropertiesChanged
        GLib.timeout_add_seconds(10, loop.quit)
        loop.run()
        out["signals"] = seen
        out["owner"] = str(bus.get_name_owner(name))
        print(json.dumps(out, sort_keys=True))
        """#

    @Test func python() async throws {
        try #require(access("/usr/bin/python3", X_OK) == 0 || isCI, "/usr/bin/python3 is missing")
        try await Self.withServer { s in
            let script = s.fx.bus.directory.file("client.py")
            try Self.pythonClient.write(toFile: script, atomically: true, encoding: .utf8)
            let r = try await run(["/usr/bin/python3", script, s.address])
            #expect(r.status == 0, "\(r.stderr)")
            let out = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
            #expect(out["add"] as? Int == 42)
            #expect(out["concat"] as? String == "x.y")
            let describe = out["describe"] as? [Any] ?? []
            #expect(describe.first as? [String] == ["a", "b", "c"])
            #expect(describe.last as? Int == 3)
            let echo = out["echo"] as? [Any] ?? []
            #expect(echo.first as? Int == 7)
            #expect(echo.last as? [String] == ["/a"])
            #expect(out["name"] as? String == "test")
            #expect(out["count"] as? Int == 31)
            #expect(out["all"] as? [String] == ["Count", "Fixed", "Level", "Name", "Options", "Secret"])
            let errors = out["errors"] as? [String: String] ?? [:]
            #expect(errors == [
                "readonly": DBusError.Name.propertyReadOnly, "wrongtype": DBusError.Name.invalidArgs,
                "unknownprop": DBusError.Name.unknownProperty, "wrongargs": DBusError.Name.invalidArgs,
                "unknownmethod": DBusError.Name.unknownMethod, "custom": "org.example.Test.Error.Py",
            ])
            #expect(out["managed"] as? [String] == ["/org/example/Test"])
            let signals = out["signals"] as? [String: Any] ?? [:]
            #expect(signals["pong"] as? String == "python")
            #expect(signals["changed"] as? Int == 32)
            #expect(signals["sender"] as? String == s.connection.uniqueName)
            #expect(s.object.property(TestObject.interface, "Count") == .uint32(32))
        }
    }
}

/// Interfaces and members of an introspection document, read with a real XML parser.
struct IntrospectionDocument {
    var interfaces: Set<String> = []
    /// interface -> ["method X", "property Y", "signal Z"]
    var members: [String: Set<String>] = [:]
    var children: [String] = []

    init(_ xml: String) throws {
        let delegate = Collector()
        let parser = XMLParser(data: Data(xml.utf8))
        parser.delegate = delegate
        guard parser.parse() else { throw TestProcessError("introspection XML does not parse: \(parser.parserError.map { "\($0)" } ?? "?")\n\(xml)") }
        interfaces = delegate.interfaces
        members = delegate.members
        children = delegate.children
    }

    private final class Collector: NSObject, XMLParserDelegate {
        var interfaces: Set<String> = []
        var members: [String: Set<String>] = [:]
        var children: [String] = []
        var current: String?
        var depth = 0

        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            switch name {
            case "interface":
                current = attributes["name"]
                if let c = current { interfaces.insert(c) }
            case "method", "property", "signal":
                if let c = current, let n = attributes["name"] { members[c, default: []].insert("\(name) \(n)") }
            case "node":
                if depth > 0, let n = attributes["name"] { children.append(n) }
                depth += 1
            default: break
            }
        }

        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            if name == "interface" { current = nil }
        }
    }
}
