// Who may change state: root, and members of `[daemon] admin-group`. Reading is open to all.
// The check comes first in every state-changing method, before its arguments are looked at, so
// an unauthorised caller learns nothing (not even whether a worker exists).
import BgWorkerAPI
import DBus
import Glibc
import Logging
import Synchronization

/// The admin group, resolved to a gid when the configuration is loaded, and the check.
final class AccessPolicy: Sendable {
    private struct Group: Sendable {
        var name: String
        var gid: UInt32
    }

    private let group = Mutex<Group?>(nil)
    /// Every state-changing call is logged with its caller, granted or refused (who restarted
    /// that worker at 3 am is a question an admin asks).
    private let logger = Logger(label: "bgworkerd.access")

    /// Resolves `admin-group` (a name or a numeric gid). Returns a warning when it names no
    /// group: then only root may change state.
    func configure(adminGroup: String?) -> String? {
        guard let adminGroup else {
            group.withLock { $0 = nil }
            return nil
        }
        let gid = groupID(adminGroup)
        group.withLock { $0 = gid.map { Group(name: adminGroup, gid: $0) } }
        return gid == nil ? "admin-group '\(adminGroup)' does not exist; only root may change state" : nil
    }

    /// Throws AccessDenied unless the caller is root (`SetHARole`: the admin group may not).
    func authorizeRoot(_ call: MethodCall) async throws(DBusError) {
        let uid: UInt32
        do {
            uid = try await call.connection.credentials(of: call.sender).uid
        } catch {
            throw DBusError.accessDenied("cannot tell who the caller is: \(error)")
        }
        guard uid == 0 else { throw DBusError.accessDenied("only root may set the HA role (caller uid \(uid))") }
    }

    /// Throws AccessDenied unless the caller is root or in the admin group (by the credentials
    /// the bus daemon vouches for, GetConnectionCredentials).
    func authorize(_ call: MethodCall) async throws(DBusError) {
        let credentials: Credentials
        do {
            credentials = try await call.connection.credentials(of: call.sender)
        } catch {
            throw DBusError.accessDenied("cannot tell who the caller is: \(error)")
        }
        let admin = group.withLock { $0 }
        let caller = Self.describe(credentials, sender: call.sender)
        if credentials.uid == 0 || (admin.map { credentials.groups?.contains($0.gid) == true } ?? false) {
            logger.notice("\(Self.describe(call)) by \(caller)")
            return
        }
        logger.notice("refused \(Self.describe(call)) to \(caller)")
        let who = admin.map { "root or members of group '\($0.name)'" } ?? "root"
        throw DBusError.accessDenied("only \(who) may change bgworker state (caller uid \(credentials.uid))")
    }

    /// `Disable dice`, `Set LogLevel = "debug" on /org/example/BgWorker/worker/dice`: the
    /// request in a few words (strings and numbers only, never a value's dump).
    static func describe(_ call: MethodCall) -> String {
        func text(_ value: DBusValue) -> String {
            switch value.unwrappingVariant {
            case .string(let s): "\"\(s)\""
            case .bool(let b): String(b)
            case .uint32(let n): String(n)
            case .int32(let n): String(n)
            default: "(\(value.unwrappingVariant.signature))"
            }
        }
        let object = call.path.rawValue == BgWorkerBus.managerPath ? "" : " on \(call.path.rawValue)"
        if call.interface == "org.freedesktop.DBus.Properties", call.member == "Set", call.arguments.count == 3 {
            return "Set \(call.arguments[1].stringValue ?? "?") = \(text(call.arguments[2]))\(object)"
        }
        let name = call.arguments.first?.stringValue.map { " \($0)" } ?? ""
        return "\(call.member)\(name)\(object)"
    }

    /// `uid 1000 pid 4242 (unit session-3.scope)`: the unit from the caller's cgroup, where
    /// it still runs and the bus knows its pid.
    static func describe(_ credentials: Credentials, sender: String) -> String {
        guard let pid = credentials.pid else { return "uid \(credentials.uid) (\(sender))" }
        let unit = unitOf(pid: pid).map { " unit \($0)" } ?? ""
        return "uid \(credentials.uid) pid \(pid)\(unit) (\(sender))"
    }

    /// The last `.service` or `.scope` of `/proc/PID/cgroup` (cgroup v2's `0::/path`).
    static func unitOf(pid: UInt32) -> String? {
        guard case .success(let bytes) = readWholeFile("/proc/\(pid)/cgroup") else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { return nil }
        return line.split(separator: "/").last { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }.map(String.init)
    }
}

