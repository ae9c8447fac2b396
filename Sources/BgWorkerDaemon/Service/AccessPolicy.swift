// Who may change state: root, and members of `[daemon] admin-group`. Reading is open to all.
// The check comes first in every state-changing method, before its arguments are looked at, so
// an unauthorised caller learns nothing (not even whether a worker exists).
import DBus
import Glibc
import Synchronization

/// The admin group, resolved to a gid when the configuration is loaded, and the check.
final class AccessPolicy: Sendable {
    private struct Group: Sendable {
        var name: String
        var gid: UInt32
    }

    private let group = Mutex<Group?>(nil)

    /// Resolves `admin-group` (a name or a numeric gid). Returns a warning when it names no
    /// group: then only root may change state.
    func configure(adminGroup: String?) -> String? {
        guard let adminGroup else {
            group.withLock { $0 = nil }
            return nil
        }
        let gid = resolveGroupID(adminGroup)
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
        if credentials.uid == 0 { return }
        let admin = group.withLock { $0 }
        if let admin, credentials.groups?.contains(admin.gid) == true { return }
        let who = admin.map { "root or members of group '\($0.name)'" } ?? "root"
        throw DBusError.accessDenied("only \(who) may change bgworker state (caller uid \(credentials.uid))")
    }
}

/// The gid of a group name or a numeric id (`getgrnam_r`).
func resolveGroupID(_ group: String) -> UInt32? {
    if let numeric = UInt32(group) { return numeric }
    var entry = Glibc.group()
    var result: UnsafeMutablePointer<Glibc.group>?
    var buffer = [CChar](repeating: 0, count: 16384)
    let rc = getgrnam_r(group, &entry, &buffer, buffer.count, &result)
    guard rc == 0, result != nil else { return nil }
    return entry.gr_gid
}
