import BgWorkerCore
import DBus

/// A role report from an HA source: the role and a short human reason for logs and for
/// `WorkerStateChanged` reasons (e.g. "keepalived VrrpStatusChange 2", "org.example.HAManager gone").
public struct HARoleReport: Sendable, Equatable {
    public var role: HARole
    public var why: String
    public init(_ role: HARole, why: String) {
        self.role = role
        self.why = why
    }
}

/// Follows an HA manager on the bus and reports the node's role. One implementation per
/// `[ha] source` (`keepalived`, `dbus`); `none` needs no source (the role is `standalone`).
///
/// The supervisor owns the role; a source only reports. Reports are delivered in the order the
/// bus delivered the messages they come from, and each `report` is awaited before the next, so
/// role changes reach the supervisor in order.
public protocol HARoleSource: Sendable {
    /// Follows the manager on `connection` until the task is cancelled or the connection ends.
    /// Subscribes to the role signal and to the owner of the manager's name BEFORE it reads the
    /// role, reports `.unknown` while the manager has no owner or the read fails, reads the role
    /// anew whenever the name gains an owner, and ignores (and logs, with the sender) any role
    /// signal whose sender is not the current owner of the name. Returns when the connection is
    /// gone; the daemon then reports `.unknown` itself and calls `run` again on its new connection.
    func run(on connection: DBusConnection, report: @escaping @Sendable (HARoleReport) async -> Void) async
}
