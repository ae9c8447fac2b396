import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// The service as clients no one here wrote see it: errors, authorization, property writes,
/// introspection against the shipped XML, ObjectManager, the workers' environment.
@Suite(.timeLimit(.minutes(2)))
struct DaemonBusApiTests {
    static let twoWorkers = shellWorker("db-sync", "exec sleep 1000", extra: "environment = { EXAMPLE = \"1\" }")
        + shellWorker("quiet", "exec sleep 1000", extra: "enabled = false")

    @Test func unknownNamesAreNoSuchWorkerAndRestartOfADisabledWorkerIsDisabled() async throws {
        try await DaemonFixture.with(Self.twoWorkers) { fixture in
            for member in ["Enable", "Disable", "Restart", "GetWorker"] {
                let result = try await fixture.dbusSend(member, ["string:nope"])
                #expect(result.status != 0)
                #expect(result.output.contains("Error \(BgWorkerBus.ErrorName.noSuchWorker)"), "\(member): \(result.output)")
            }
            let restart = try await fixture.dbusSend("Restart", ["string:quiet"])
            #expect(restart.output.contains("Error \(BgWorkerBus.ErrorName.disabled)"), "\(restart.output)")
            #expect(try await fixture.worker("quiet").state == "disabled")
        }
    }

    @Test func wrongArgumentTypesAndUnknownLogLevelsAreInvalidArgs() async throws {
        try await DaemonFixture.with(Self.twoWorkers) { fixture in
            let wrongType = try await fixture.dbusSend("Enable", ["int32:5"])
            #expect(wrongType.output.contains("Error org.freedesktop.DBus.Error.InvalidArgs"), "\(wrongType.output)")
            let missing = try await fixture.dbusSend("GetWorker")
            #expect(missing.output.contains("Error org.freedesktop.DBus.Error.InvalidArgs"), "\(missing.output)")

            func set(_ property: String, _ value: String) async throws -> (status: Int32, output: String) {
                try await fixture.dbusSend(
                    "Set", ["string:\(BgWorkerBus.managerInterface)", "string:\(property)", "variant:\(value)"],
                    interface: "org.freedesktop.DBus.Properties")
            }
            let unknownLevel = try await set("LogLevel", "string:loud")
            #expect(unknownLevel.output.contains("Error org.freedesktop.DBus.Error.InvalidArgs"), "\(unknownLevel.output)")
            let wrongLevelType = try await set("LogLevel", "int32:3")
            #expect(wrongLevelType.output.contains("Error org.freedesktop.DBus.Error.InvalidArgs"), "\(wrongLevelType.output)")
            let readOnly = try await set("Version", "string:9")
            #expect(readOnly.output.contains("Error org.freedesktop.DBus.Error.PropertyReadOnly"), "\(readOnly.output)")
            #expect(try await fixture.property("LogLevel").string == "info")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: setpriv to a real non-root caller"))
    func nonRootCallersMayReadButNotChange() async throws {
        try await DaemonFixture.with(Self.twoWorkers, daemonSettings: #"admin-group = "4242""#) { fixture in
            let nobody = 65534
            // Authorization comes first: even a name that does not exist is AccessDenied.
            for (member, argument) in [("Disable", "db-sync"), ("Enable", "nope"), ("Restart", "db-sync"), ("Stop", "db-sync"),
                                       ("Start", "nope")] {
                let result = try await fixture.dbusSend(member, ["string:\(argument)"], asUser: nobody)
                #expect(result.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(member): \(result.output)")
            }
            let reload = try await fixture.dbusSend("Reload", asUser: nobody)
            #expect(reload.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(reload.output)")
            let worker = try await fixture.dbusSend(
                "Disable", path: BgWorkerBus.workerPathPrefix + "db_2dsync", interface: BgWorkerBus.workerInterface, asUser: nobody)
            #expect(worker.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(worker.output)")
            let setLevel = try await fixture.dbusSend(
                "Set", ["string:\(BgWorkerBus.managerInterface)", "string:LogLevel", "variant:string:debug"],
                interface: "org.freedesktop.DBus.Properties", asUser: nobody)
            #expect(setLevel.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(setLevel.output)")
            // ... before the type and read-only checks: a wrong type or a read-only property tells
            // such a caller nothing more.
            for (interface, property, value) in [(BgWorkerBus.managerInterface, "LogLevel", "int32:3"),
                                                 (BgWorkerBus.managerInterface, "Version", "string:9")] {
                let refused = try await fixture.dbusSend(
                    "Set", ["string:\(interface)", "string:\(property)", "variant:\(value)"],
                    interface: "org.freedesktop.DBus.Properties", asUser: nobody)
                #expect(refused.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(property): \(refused.output)")
            }
            for member in ["Stop", "Start"] {
                let onObject = try await fixture.dbusSend(
                    member, path: BgWorkerBus.workerPathPrefix + "db_2dsync", interface: BgWorkerBus.workerInterface, asUser: nobody)
                #expect(onObject.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(member): \(onObject.output)")
            }
            // A worker's own LogLevel, even an invalid one.
            for level in ["debug", "loud"] {
                let workerLevel = try await fixture.dbusSend(
                    "Set", ["string:\(BgWorkerBus.workerInterface)", "string:LogLevel", "variant:string:\(level)"],
                    path: BgWorkerBus.workerPathPrefix + "db_2dsync", interface: "org.freedesktop.DBus.Properties", asUser: nobody)
                #expect(workerLevel.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(workerLevel.output)")
            }
            #expect(try await fixture.property("LogLevel", worker: "db_2dsync").string == "")
            let workerSet = try await fixture.dbusSend(
                "Set", ["string:\(BgWorkerBus.workerInterface)", "string:State", "variant:string:running"],
                path: BgWorkerBus.workerPathPrefix + "db_2dsync", interface: "org.freedesktop.DBus.Properties", asUser: nobody)
            #expect(workerSet.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(workerSet.output)")
            #expect(try await fixture.worker("db-sync").state == "running")
            #expect(try await fixture.property("LogLevel").string == "info")

            // Reading is open.
            let list = try await fixture.dbusSend("ListWorkers", asUser: nobody)
            #expect(list.status == 0 && list.output.contains("db-sync"), "\(list.output)")
            let get = try await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "busctl",
                                     "--address=\(fixture.bus.unixAddress)", "get-property", DaemonFixture.busName,
                                     DaemonFixture.manager, DaemonFixture.interface, "HARole"])
            #expect(get.status == 0 && get.stdout.contains("standalone"), "\(get.stderr)")

            // A member of the admin group may change state.
            let admin = try await run([
                "setpriv", "--reuid=65534", "--regid=65534", "--groups=4242", "dbus-send", "--bus=\(fixture.bus.unixAddress)",
                "--print-reply", "--dest=\(DaemonFixture.busName)", DaemonFixture.manager, "\(BgWorkerBus.managerInterface).Disable",
                "string:db-sync"])
            #expect(admin.status == 0, "\(admin.stderr)")
            #expect(try await fixture.worker("db-sync").state == "disabled")
        }
    }

    /// The contract orders authorization first: a caller who may not change state gets
    /// AccessDenied from a state-changing method even with arguments of the wrong type; root gets
    /// InvalidArgs for the same call, and so does anyone from a method that only reads.
    @Test(.enabled(if: rootTestsEnabled, "needs root: setpriv to a real non-root caller"))
    func authorizationComesBeforeTheArgumentChecks() async throws {
        try await DaemonFixture.with(Self.twoWorkers) { fixture in
            let nobody = 65534
            let worker = BgWorkerBus.workerPathPrefix + "db_2dsync"
            let wrongCalls: [(member: String, arguments: [String], path: String, interface: String)] = [
                ("Enable", ["int32:5"], DaemonFixture.manager, DaemonFixture.interface),
                ("Disable", [], DaemonFixture.manager, DaemonFixture.interface),
                ("Restart", ["string:db-sync", "string:again"], DaemonFixture.manager, DaemonFixture.interface),
                ("Reload", ["string:now"], DaemonFixture.manager, DaemonFixture.interface),
                ("Disable", ["string:db-sync"], worker, BgWorkerBus.workerInterface),
                ("Stop", ["int32:5"], DaemonFixture.manager, DaemonFixture.interface),
                ("Start", [], DaemonFixture.manager, DaemonFixture.interface),
                ("Stop", ["string:db-sync"], worker, BgWorkerBus.workerInterface),
            ]
            for call in wrongCalls {
                let refused = try await fixture.dbusSend(call.member, call.arguments, path: call.path, interface: call.interface, asUser: nobody)
                #expect(refused.output.contains("Error org.freedesktop.DBus.Error.AccessDenied"), "\(call.member) as nobody: \(refused.output)")
                let asRoot = try await fixture.dbusSend(call.member, call.arguments, path: call.path, interface: call.interface)
                #expect(asRoot.output.contains("Error org.freedesktop.DBus.Error.InvalidArgs"), "\(call.member) as root: \(asRoot.output)")
            }
            for (member, arguments) in [("GetWorker", ["int32:5"]), ("ListWorkers", ["string:all"])] {
                let read = try await fixture.dbusSend(member, arguments, asUser: nobody)
                #expect(read.output.contains("Error org.freedesktop.DBus.Error.InvalidArgs"), "\(member) as nobody: \(read.output)")
            }
            #expect(try await fixture.worker("db-sync").state == "running")
        }
    }

    @Test func logLevelChangesAtOnceAndReachesNewWorkers() async throws {
        try await DaemonFixture.with(Self.twoWorkers) { fixture in
            let monitor = try await fixture.monitor()
            let set = try await fixture.busctl(["set-property", DaemonFixture.busName, DaemonFixture.manager,
                                                DaemonFixture.interface, "LogLevel", "s", "debug"])
            #expect(set.status == 0, "\(set.stderr)")
            let changed = try await monitor.waitFor("PropertiesChanged LogLevel") { message in
                message.member == "PropertiesChanged" && message.path == DaemonFixture.manager
            }
            #expect(changed.body.first?.string == DaemonFixture.interface)
            #expect(changed.body.dropFirst().first?.description.contains("debug") == true, "\(changed)")
            #expect(try await fixture.property("LogLevel").string == "debug")

            try await fixture.call("Restart", "s", ["db-sync"])
            let pid = try await fixture.worker("db-sync").pid
            #expect(environment(of: pid)["BGWORKER_LOG_LEVEL"] == "debug")
        }
    }

    @Test func workersGetTheirEnvironmentAndTheDaemonsBus() async throws {
        try await DaemonFixture.with(Self.twoWorkers) { fixture in
            let pid = try await fixture.worker("db-sync").pid
            let environment = environment(of: pid)
            #expect(environment["BGWORKER_NAME"] == "db-sync")
            #expect(environment["BGWORKER_LOG_LEVEL"] == "info")
            #expect(environment["BGWORKER_OBJECT_PATH"] == BgWorkerBus.workerPathPrefix + "db_2dsync")
            #expect(environment["EXAMPLE"] == "1")
            #expect(environment["DBUS_SYSTEM_BUS_ADDRESS"] == fixture.bus.unixAddress, "workers follow the daemon's bus")
            #expect(environment["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            // PWD is the shell's own doing.
            #expect(Set(environment.keys).subtracting(["PWD"]).count == 6, "nothing of the daemon's own environment leaks: \(environment)")
        }
    }

    @Test func theObjectManagerListsEveryWorkerForPython() async throws {
        try await DaemonFixture.with(Self.twoWorkers) { fixture in
            let script = """
                import dbus, sys
                bus = dbus.bus.BusConnection(sys.argv[1])
                manager = bus.get_object("\(BgWorkerBus.busName)", "\(BgWorkerBus.managerPath)")
                objects = dbus.Interface(manager, "org.freedesktop.DBus.ObjectManager").GetManagedObjects()
                for path in sorted(objects):
                    worker = objects[path]["\(BgWorkerBus.workerInterface)"]
                    print(path, worker["Name"], worker["State"], bool(worker["Enabled"]), worker["RunOn"])
                props = dbus.Interface(manager, "org.freedesktop.DBus.Properties")
                print(props.Get("\(BgWorkerBus.managerInterface)", "Version"), props.Get("\(BgWorkerBus.managerInterface)", "Runner"))
                """
            let result = try await run(["/usr/bin/python3", "-c", script, fixture.bus.unixAddress])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.split(separator: "\n").map(String.init) == [
                "\(BgWorkerBus.workerPathPrefix)db_2dsync db-sync running True primary",
                "\(BgWorkerBus.workerPathPrefix)quiet quiet disabled False primary",
                "0.1.0 process",
            ])
        }
    }

    /// GetManagedObjects keeps each worker's entry until its properties change: read right after
    /// a change (busctl, as a client no one here wrote), it must agree with Get.
    @Test func theObjectManagerShowsAStateChangeAtOnce() async throws {
        try await DaemonFixture.with(Self.twoWorkers) { fixture in
            func managed(_ label: String) async throws -> [String: BusValue] {
                let reply = try await fixture.call("GetManagedObjects", interface: "org.freedesktop.DBus.ObjectManager")
                guard case .object(let objects)? = reply.first,
                      case .object(let interfaces)? = objects["\(DaemonFixture.manager)/worker/\(label)"],
                      case .object(let properties)? = interfaces["\(DaemonFixture.interface).Worker"]
                else { throw TestProcessError("GetManagedObjects answered \(reply)") }
                return properties.compactMapValues { if case .object(let v) = $0 { v["data"] } else { nil } }
            }
            let monitor = try await fixture.monitor()
            let before = try await managed("quiet")
            #expect(before["State"]?.string == "disabled")
            #expect(before["Enabled"] == .bool(false))

            try await fixture.call("Enable", "s", ["quiet"])
            let pid = try await monitor.waitUntil(fixture, worker: "quiet", is: "running").pid
            let after = try await managed("quiet")
            #expect(after["State"]?.string == "running")
            #expect(after["Enabled"] == .bool(true))
            #expect(after["Pid"]?.uint32 == pid)
            #expect(after["StateChangedAt"] == (try await fixture.property("StateChangedAt", worker: "quiet")))

            try await fixture.call("Disable", "s", ["quiet"])
            _ = try await monitor.waitUntil(fixture, worker: "quiet", is: "disabled")
            let disabled = try await managed("quiet")
            #expect(disabled["State"]?.string == "disabled")
            #expect(disabled["Pid"]?.uint32 == 0)
            #expect(disabled["Restarts"] == (try await fixture.property("Restarts", worker: "quiet")))
        }
    }

    @Test func introspectionMatchesTheShippedXML() async throws {
        try await DaemonFixture.with(Self.twoWorkers) { fixture in
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
            for (path, interface, file) in [
                (DaemonFixture.manager, "org.example.BgWorker", "dbus/org.example.BgWorker.xml"),
                ("/org/example/BgWorker/worker/db_2dsync", "org.example.BgWorker.Worker", "dbus/org.example.BgWorker.Worker.xml"),
            ] {
                let shipped = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
                let live = try await fixture.busctl(["introspect", "--xml-interface", DaemonFixture.busName, path])
                #expect(live.status == 0, "\(live.stderr)")
                let expected = InterfaceShape(xml: shipped, interface: interface)
                let actual = InterfaceShape(xml: live.stdout, interface: interface)
                #expect(!expected.members.isEmpty, "\(file) declares \(interface)")
                #expect(actual.members == expected.members, "\(path) against \(file)")
            }
            // The manager also answers ObjectManager; gdbus, another client, sees it too.
            let gdbus = try await run(["gdbus", "introspect", "--address", fixture.bus.unixAddress, "--dest",
                                       DaemonFixture.busName, "--object-path", DaemonFixture.manager])
            #expect(gdbus.stdout.contains("interface org.freedesktop.DBus.ObjectManager"), "\(gdbus.stdout)")
            #expect(gdbus.stdout.contains("node worker"), "\(gdbus.stdout)")
        }
    }
}

/// The methods (with argument types and directions), properties (type, access, change
/// annotation) and signals of one interface in introspection XML, as comparable text.
struct InterfaceShape {
    var members: Set<String> = []

    init(xml: String, interface: String) {
        guard let start = xml.range(of: "<interface name=\"\(interface)\">"),
              let end = xml.range(of: "</interface>", range: start.upperBound..<xml.endIndex)
        else { return }
        let body = String(xml[start.upperBound..<end.lowerBound])
            .replacingOccurrences(of: "<!--[\\s\\S]*?-->", with: "", options: .regularExpression)
        let element = try! NSRegularExpression(pattern: "<(method|signal|property)\\s+name=\"([^\"]+)\"([^>]*?)(/>|>([\\s\\S]*?)</\\1>)")
        let argument = try! NSRegularExpression(pattern: "<arg\\s([^>]*)/>")
        let annotation = try! NSRegularExpression(pattern: "<annotation\\s+name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\"\\s+value=\"([^\"]+)\"")
        let nsBody = body as NSString
        for match in element.matches(in: body, range: NSRange(location: 0, length: nsBody.length)) {
            let kind = nsBody.substring(with: match.range(at: 1))
            let name = nsBody.substring(with: match.range(at: 2))
            let attributes = nsBody.substring(with: match.range(at: 3))
            let inner = match.range(at: 5).location == NSNotFound ? "" : nsBody.substring(with: match.range(at: 5))
            let nsInner = inner as NSString
            switch kind {
            case "property":
                var emits = "true"
                if let a = annotation.firstMatch(in: inner, range: NSRange(location: 0, length: nsInner.length)) {
                    emits = nsInner.substring(with: a.range(at: 1))
                }
                members.insert("property \(name) \(Self.attribute("type", in: attributes)) \(Self.attribute("access", in: attributes)) emits=\(emits)")
            default:
                let arguments = argument.matches(in: inner, range: NSRange(location: 0, length: nsInner.length)).map { m -> String in
                    let text = nsInner.substring(with: m.range(at: 1))
                    let direction = Self.attribute("direction", in: text)
                    return "\(kind == "signal" ? "" : (direction.isEmpty ? "in" : direction) + " ")\(Self.attribute("type", in: text))"
                }
                members.insert("\(kind) \(name)(\(arguments.joined(separator: ", ")))")
            }
        }
    }

    private static func attribute(_ name: String, in text: String) -> String {
        guard let range = text.range(of: "\(name)=\"([^\"]*)\"", options: .regularExpression) else { return "" }
        return String(text[range].dropFirst(name.count + 2).dropLast())
    }
}
