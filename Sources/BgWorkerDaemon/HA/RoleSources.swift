import BgWorkerCore
import DBus
import Logging

/// Follows keepalived's `org.keepalived.Vrrp1` service: the VRRP instance at `instance`
/// (e.g. `/org/keepalived/Vrrp1/Instance/eth0/51/IPv4`).
///
/// The role comes from the instance's `State` property (`(us)`, read on start and whenever the
/// name gains an owner) and its `VrrpStatusChange(u)` signal: 2 (MASTER) is primary; 1 (BACKUP),
/// 0 (INIT), 3 (FAULT) are secondary; anything else is unknown. `VrrpStopped` (on
/// `/org/keepalived/Vrrp1/Vrrp`) and a name without owner are unknown; `VrrpStarted` and
/// `VrrpReloaded` make the source read `State` again (a reload may have changed or removed the
/// instance without a `VrrpStatusChange`).
public struct KeepalivedRoleSource: HARoleSource {
    public static let busName = "org.keepalived.Vrrp1"
    public static let instanceInterface = "org.keepalived.Vrrp1.Instance"
    public static let vrrpPath = try! ObjectPath("/org/keepalived/Vrrp1/Vrrp")
    public static let vrrpInterface = "org.keepalived.Vrrp1.Vrrp"

    public let instance: ObjectPath
    let logger: Logger

    public init(instance: ObjectPath, logger: Logger = Logger(label: "bgworkerd.ha")) {
        self.instance = instance
        self.logger = logger
    }

    /// keepalived's VRRP state number as a role (the contract's mapping).
    public static func role(forVRRPState state: UInt32) -> HARole {
        switch state {
        case 2: .primary
        case 0, 1, 3: .secondary
        default: .unknown
        }
    }

    static func stateName(_ state: UInt32) -> String {
        switch state {
        case 0: "INIT"
        case 1: "BACKUP"
        case 2: "MASTER"
        case 3: "FAULT"
        case 97: "DELETED"
        case 98: "STOP"
        default: "unknown state"
        }
    }

    var manager: ManagerProtocol {
        let instance = self.instance
        return ManagerProtocol(
            name: Self.busName,
            signalRules: [
                MatchRule(path: instance, interface: Self.instanceInterface, member: "VrrpStatusChange"),
                MatchRule(path: Self.vrrpPath, interface: Self.vrrpInterface),
            ],
            rolePath: instance, roleInterface: Self.instanceInterface, roleProperty: "State",
            interpretSignal: { signal in
                switch (signal.interface, signal.member) {
                case (Self.instanceInterface, "VrrpStatusChange"):
                    guard signal.arguments.count == 1, let state = signal.arguments[0].uint32Value else {
                        return .role(.unknown, why: "keepalived VrrpStatusChange with arguments '\(signal.arguments.signature)'")
                    }
                    return .role(Self.role(forVRRPState: state), why: "keepalived VrrpStatusChange \(state) (\(Self.stateName(state)))")
                case (Self.vrrpInterface, "VrrpStopped"):
                    return .role(.unknown, why: "keepalived VrrpStopped")
                default:
                    return .readAgain(why: "keepalived \(signal.member)")
                }
            },
            interpretRole: { value in
                guard case .structure(let fields) = value, fields.count == 2, let state = fields[0].uint32Value else {
                    return (.unknown, "keepalived State of type '\(value.signature)', not '(us)'")
                }
                return (Self.role(forVRRPState: state), "keepalived State \(state) (\(fields[1].stringValue ?? Self.stateName(state)))")
            })
    }

    public func run(on connection: DBusConnection, report: @escaping @Sendable (HARoleReport) async -> Void) async {
        await followManager(manager, on: connection, logger: logger, report: report)
    }
}

/// Follows an HA manager that implements `org.example.HAManager` under the bus name `service`:
/// property `Role s` and signal `RoleChanged(s)` on `/org/example/HAManager`. A role other than
/// `primary` or `secondary`, a failed read and a name without owner are unknown.
public struct HAManagerRoleSource: HARoleSource {
    public static let defaultService = HASettings.defaultService
    public static let path = try! ObjectPath("/org/example/HAManager")
    public static let interface = "org.example.HAManager"

    public let service: String
    let logger: Logger

    public init(service: String = HAManagerRoleSource.defaultService, logger: Logger = Logger(label: "bgworkerd.ha")) {
        self.service = service
        self.logger = logger
    }

    /// The manager's role text as a role: only `primary` and `secondary` are roles.
    public static func role(forRoleText text: String) -> HARole {
        switch text {
        case "primary": .primary
        case "secondary": .secondary
        default: .unknown
        }
    }

    /// A role text fit for a log line: a peer could send anything.
    static func quoted(_ text: String) -> String {
        let shown = text.count > 40 ? String(text.prefix(40)) + "…" : text
        return "\"" + shown.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : String($0) }.joined() + "\""
    }

    var manager: ManagerProtocol {
        let service = self.service
        return ManagerProtocol(
            name: service,
            signalRules: [MatchRule(path: Self.path, interface: Self.interface, member: "RoleChanged")],
            rolePath: Self.path, roleInterface: Self.interface, roleProperty: "Role",
            interpretSignal: { signal in
                guard signal.arguments.count == 1, let text = signal.arguments[0].stringValue else {
                    return .role(.unknown, why: "\(service) RoleChanged with arguments '\(signal.arguments.signature)'")
                }
                return .role(Self.role(forRoleText: text), why: "\(service) RoleChanged \(Self.quoted(text))")
            },
            interpretRole: { value in
                guard let text = value.stringValue else {
                    return (.unknown, "\(service) Role of type '\(value.signature)', not 's'")
                }
                return (Self.role(forRoleText: text), "\(service) Role \(Self.quoted(text))")
            })
    }

    public func run(on connection: DBusConnection, report: @escaping @Sendable (HARoleReport) async -> Void) async {
        await followManager(manager, on: connection, logger: logger, report: report)
    }
}

/// Reports `unknown` once and waits for the connection to end (a configuration that cannot be
/// followed; it never gives a role).
struct UnknownRoleSource: HARoleSource {
    let why: String

    func run(on connection: DBusConnection, report: @escaping @Sendable (HARoleReport) async -> Void) async {
        await report(HARoleReport(.unknown, why: why))
        for await event in connection.events {
            if case .disconnected = event { return }
        }
    }
}
