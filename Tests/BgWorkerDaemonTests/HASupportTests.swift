import BgWorkerCore
import BgWorkerDaemon
import DBus
import Foundation
import Logging
import Synchronization
import Testing
import TestSupport

// Shared by the HA*Tests files: a recorder of role reports, a log capture, a scriptable HA
// manager written with dbus-python (a D-Bus implementation no one here wrote), and a runner
// for a source on a real bus.

/// Records every report of a source, in order; tests wait on it.
final class RoleRecorder: Sendable {
    let reports = WatchedValue<[HARoleReport]>([])

    var report: @Sendable (HARoleReport) async -> Void {
        { r in self.reports.update { $0.append(r) } }
    }

    var roles: [HARole] { reports.value.map(\.role) }

    /// Waits until the reports so far are exactly `expected` (roles, in order).
    @discardableResult
    func wait(for expected: [HARole], timeout: Duration = .seconds(10)) async throws -> [HARoleReport] {
        try await reports.wait("reports \(expected.map(\.rawValue))", timeout: timeout) { $0.map(\.role) == expected }
    }

    /// Waits until the last report is `role`.
    @discardableResult
    func waitForLast(_ role: HARole, timeout: Duration = .seconds(20)) async throws -> [HARoleReport] {
        try await reports.wait("last report \(role.rawValue)", timeout: timeout) { $0.last?.role == role }
    }
}

/// A swift-log handler that keeps the lines, so tests can wait for a warning (tests never
/// bootstrap the logging system).
struct CapturedLog: LogHandler {
    struct Line: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }
    let lines: WatchedValue<[Line]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }.mapValues { "\($0)" }
        lines.update { $0.append(Line(level: event.level, message: "\(event.message)", metadata: merged)) }
    }

    static func make() -> (Logger, WatchedValue<[Line]>) {
        let lines = WatchedValue<[Line]>([])
        return (Logger(label: "test.ha") { _ in CapturedLog(lines: lines) }, lines)
    }
}

/// Runs a source on its own connection to `address` until `stop()`.
final class RunningSource: Sendable {
    let connection: DBusConnection
    let recorder = RoleRecorder()
    let log: WatchedValue<[CapturedLog.Line]>
    private let task: Task<Void, Never>
    /// Set when `run` returned.
    let finished = WatchedValue(false)

    init(_ make: (Logger) -> any HARoleSource, address: String) async throws {
        let (logger, lines) = CapturedLog.make()
        log = lines
        connection = try await DBusConnection.connect(.address(address), timeout: .seconds(10))
        let source = make(logger)
        let recorder = recorder, connection = connection, finished = finished
        task = Task {
            await source.run(on: connection, report: recorder.report)
            finished.update { $0 = true }
        }
    }

    func warnings(containing text: String) -> [CapturedLog.Line] {
        log.value.filter { $0.level == .warning && $0.message.contains(text) }
    }

    func stop() async {
        task.cancel()
        await task.value
        connection.close()
    }
}

/// An `org.example.HAManager` in a dbus-python process, driven over the bus by the test through
/// a control interface on the same object: own or release the name, change the role (with or
/// without `RoleChanged`), hold `Properties.Get` calls and answer them later with a chosen value.
final class ScriptedHAManager: Sendable {
    static let script = #"""
import os, sys, dbus, dbus.service, dbus.mainloop.glib, dbus.lowlevel
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(os.environ["BGW_BUS"])
NAME = os.environ["BGW_NAME"]
IFACE = "org.example.HAManager"
CTL = "org.example.HAManagerTest"
PATH = "/org/example/HAManager"

class Manager(dbus.service.Object):
    def __init__(self):
        dbus.service.Object.__init__(self, bus, PATH)
        self.role = os.environ.get("BGW_ROLE", "primary")
        self.int_role = False
        self.hold = False
        self.held = []
        self.waiters = []

    @dbus.service.signal(IFACE, signature="s")
    def RoleChanged(self, role):
        pass

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="ss", out_signature="v", async_callbacks=("ok", "err"))
    def Get(self, interface, prop, ok, err):
        if interface != IFACE or prop != "Role":
            err(dbus.exceptions.DBusException("no property %s.%s" % (interface, prop), name="org.freedesktop.DBus.Error.UnknownProperty"))
            return
        if self.hold:
            self.held.append(ok)
            for w in self.waiters:
                w()
            self.waiters = []
            return
        ok(dbus.Int32(7) if self.int_role else dbus.String(self.role))

    @dbus.service.method(CTL, in_signature="", out_signature="u")
    def Own(self):
        return bus.request_name(NAME, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)

    @dbus.service.method(CTL, in_signature="", out_signature="u")
    def Release(self):
        return bus.release_name(NAME)

    @dbus.service.method(CTL, in_signature="sb", out_signature="")
    def SetRole(self, role, emit):
        self.role = role
        if emit:
            self.RoleChanged(role)

    @dbus.service.method(CTL, in_signature="as", out_signature="")
    def Burst(self, roles):
        for r in roles:
            self.role = r
            self.RoleChanged(r)

    @dbus.service.method(CTL, in_signature="b", out_signature="")
    def IntRole(self, on):
        self.int_role = on

    @dbus.service.method(CTL, in_signature="u", out_signature="")
    def EmitWrongType(self, value):
        msg = dbus.lowlevel.SignalMessage(PATH, IFACE, "RoleChanged")
        msg.append(dbus.UInt32(value), signature="u")
        bus.send_message(msg)

    @dbus.service.method(CTL, in_signature="b", out_signature="")
    def Hold(self, on):
        self.hold = on

    @dbus.service.method(CTL, in_signature="", out_signature="", async_callbacks=("ok", "err"))
    def WaitHeld(self, ok, err):
        if self.held:
            ok()
        else:
            self.waiters.append(ok)

    @dbus.service.method(CTL, in_signature="s", out_signature="")
    def Answer(self, value):
        self.held.pop(0)(dbus.String(value))

    @dbus.service.method(CTL, in_signature="ss", out_signature="")
    def AnswerThenChange(self, value, role):
        self.held.pop(0)(dbus.String(value))
        self.role = role
        self.RoleChanged(role)

manager = Manager()
if os.environ.get("BGW_OWN") == "1":
    bus.request_name(NAME, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
print(bus.get_unique_name(), flush=True)
GLib.MainLoop().run()
"""#

    static let python = "/usr/bin/python3"
    static var available: Bool {
        runBlocking([python, "-c", "import dbus, dbus.mainloop.glib, gi.repository.GLib"]) == 0
    }

    let process: ChildProcess
    let uniqueName: String
    let control: DBusConnection
    let name: String

    /// Starts the manager on the bus at `address`; with `own`, it owns `name` before it says
    /// it is ready.
    init(address: String, name: String = "org.example.HAManager", role: String = "primary", own: Bool = true) async throws {
        self.name = name
        process = try ChildProcess([Self.python, "-c", Self.script], extraEnvironment: [
            "BGW_BUS": address, "BGW_NAME": name, "BGW_ROLE": role, "BGW_OWN": own ? "1" : "0",
        ], captureStdout: true, captureStderr: false)
        guard let line = try await process.readLine(timeout: .seconds(20)), line.hasPrefix(":") else {
            await process.terminate(grace: .seconds(2))
            throw TestProcessError("the scripted HA manager did not start")
        }
        uniqueName = line
        control = try await DBusConnection.connect(.address(address), timeout: .seconds(10))
    }

    @discardableResult
    func call(_ member: String, _ arguments: [DBusValue] = []) async throws -> [DBusValue] {
        try await control.call(destination: uniqueName, path: try ObjectPath("/org/example/HAManager"),
                               interface: "org.example.HAManagerTest", member: member, arguments: arguments)
    }

    func own() async throws { try await call("Own") }
    func release() async throws { try await call("Release") }
    func setRole(_ role: String, emit: Bool = true) async throws { try await call("SetRole", [.string(role), .bool(emit)]) }
    func burst(_ roles: [String]) async throws { try await call("Burst", [.stringArray(roles)]) }
    func hold(_ on: Bool) async throws { try await call("Hold", [.bool(on)]) }
    func waitHeld() async throws { try await call("WaitHeld") }
    func answer(_ value: String) async throws { try await call("Answer", [.string(value)]) }
    func answerThenChange(answer: String, role: String) async throws {
        try await call("AnswerThenChange", [.string(answer), .string(role)])
    }

    func stop() async {
        control.close()
        await process.terminate(grace: .seconds(2))
    }
}

/// Emits a `RoleChanged` from a connection of busctl's own (not the owner): a forgery.
func forgeRoleChanged(_ role: String, address: String) async throws {
    let r = try await run(["busctl", "--address=\(address)", "emit", "/org/example/HAManager",
                           "org.example.HAManager", "RoleChanged", "s", role])
    guard r.status == 0 else { throw TestProcessError("busctl emit: \(r.stderr)") }
}
