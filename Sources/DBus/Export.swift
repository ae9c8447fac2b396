import Synchronization

/// A named, typed argument of a method or signal (names appear in introspection only).
public struct DBusArgument: Sendable, Hashable {
    public var name: String
    public var type: DBusType
    public init(_ name: String, _ type: DBusType) {
        self.name = name
        self.type = type
    }
}

/// An incoming method call, as a handler sees it.
public struct MethodCall: Sendable {
    /// The caller's unique name (empty on a peer-to-peer connection).
    public var sender: String
    public var path: ObjectPath
    /// The interface the caller named, or the one the member was found in.
    public var interface: String
    public var member: String
    public var arguments: [DBusValue]
    /// The connection the call came in on (use it for `credentials(of: sender)`).
    public var connection: DBusConnection
    /// The object called.
    public var object: ExportedObject
}

/// A method of an exported interface. The handler's arguments have been checked against
/// `inArgs`; what it returns must match `outArgs` (else the caller gets `Failed`). It throws
/// `DBusError` to answer with that error; any other error answers `Failed`.
///
/// `authorize`, when given, runs first, before the arguments are checked: a caller it refuses
/// (by throwing, e.g. `DBusError.accessDenied`) gets that answer whatever the arguments, and
/// learns nothing from an `InvalidArgs`. Its call carries the arguments as sent (empty when they
/// cannot be read).
///
/// Handlers start on the connection's thread (the connection is their task executor), so one
/// that answers without suspending costs no thread hop. A handler that does long synchronous
/// work should move it elsewhere (an actor, a detached task): while it runs, the connection
/// does nothing else.
public struct DBusMethod: Sendable {
    public var name: String
    public var inArgs: [DBusArgument]
    public var outArgs: [DBusArgument]
    public var handler: @Sendable (MethodCall) async throws -> [DBusValue]
    public var authorize: (@Sendable (MethodCall) async throws -> Void)?

    public init(_ name: String, in inArgs: [DBusArgument] = [], out outArgs: [DBusArgument] = [],
                authorize: (@Sendable (MethodCall) async throws -> Void)? = nil,
                handler: @escaping @Sendable (MethodCall) async throws -> [DBusValue]) {
        self.name = name
        self.inArgs = inArgs
        self.outArgs = outArgs
        self.authorize = authorize
        self.handler = handler
    }

    var inSignature: String { inArgs.map(\.type.signature).joined() }
}

/// A property of an exported interface. Its value lives in the `ExportedObject`, so Get, GetAll
/// and GetManagedObjects are answered on the connection thread; the owner updates it with
/// `ExportedObject.setProperty`.
public struct DBusProperty: Sendable {
    public enum Access: Sendable, Hashable {
        case read, readwrite
    }

    /// `org.freedesktop.DBus.Property.EmitsChangedSignal`.
    public enum ChangeSignal: Sendable, Hashable {
        /// PropertiesChanged carries the new value (the default).
        case emits
        /// PropertiesChanged names the property as invalidated, without its value.
        case invalidates
        /// The value never changes.
        case const
        /// No signal.
        case none
    }

    public var name: String
    public var type: DBusType
    public var access: Access
    public var initialValue: DBusValue
    public var changeSignal: ChangeSignal
    /// Called for a `Set` from the bus (after access and type checks) with the new value;
    /// returns the value to store (and announce), or throws `DBusError` to refuse. Without it,
    /// a writable property stores what it is given.
    public var set: (@Sendable (DBusValue, MethodCall) async throws -> DBusValue)?

    public init(_ name: String, _ type: DBusType, access: Access = .read, initial: DBusValue,
                changeSignal: ChangeSignal = .emits,
                set: (@Sendable (DBusValue, MethodCall) async throws -> DBusValue)? = nil) {
        self.name = name
        self.type = type
        self.access = access
        self.initialValue = initial
        self.changeSignal = changeSignal
        self.set = set
    }
}

/// A signal an interface declares (for introspection, and to check `ExportedObject.emitSignal`).
public struct DBusSignalDeclaration: Sendable, Hashable {
    public var name: String
    public var args: [DBusArgument]
    public init(_ name: String, _ args: [DBusArgument] = []) {
        self.name = name
        self.args = args
    }
}

public struct DBusInterface: Sendable {
    public var name: String
    public var methods: [DBusMethod]
    public var properties: [DBusProperty]
    public var signals: [DBusSignalDeclaration]
    /// Runs first for every `Properties.Set` on this interface, before the read-only and type
    /// checks: a caller it refuses (by throwing, e.g. `DBusError.accessDenied`) learns nothing
    /// else from a Set, as systemd's services answer. Nil: no check beyond the property's own.
    public var authorizeSet: (@Sendable (MethodCall) async throws -> Void)?

    public init(_ name: String, methods: [DBusMethod] = [], properties: [DBusProperty] = [],
                signals: [DBusSignalDeclaration] = [],
                authorizeSet: (@Sendable (MethodCall) async throws -> Void)? = nil) {
        self.name = name
        self.methods = methods
        self.properties = properties
        self.signals = signals
        self.authorizeSet = authorizeSet
    }
}

/// The standard interfaces every exported object answers.
enum StandardInterface {
    static let peer = "org.freedesktop.DBus.Peer"
    static let introspectable = "org.freedesktop.DBus.Introspectable"
    static let properties = "org.freedesktop.DBus.Properties"
    static let objectManager = "org.freedesktop.DBus.ObjectManager"
    static let all: Set<String> = [peer, introspectable, properties, objectManager]
}

/// An object to export on one or more connections: its interfaces (the same declarations
/// dispatch calls and generate the introspection XML) and its property values.
///
/// With `objectManager: true` it also answers `org.freedesktop.DBus.ObjectManager` for every
/// object exported below its path, and announces their export and unexport
/// (InterfacesAdded/InterfacesRemoved).
///
/// Values survive the connection: after a reconnect, export the same object on the new
/// connection.
public final class ExportedObject: Sendable {
    public let path: ObjectPath
    public let interfaces: [DBusInterface]
    public let isObjectManager: Bool

    struct Table: Sendable {
        let interface: DBusInterface
        let methods: [String: DBusMethod]
        let properties: [String: DBusProperty]
        let signals: [String: DBusSignalDeclaration]
    }

    let tables: [String: Table]
    /// The property values, and this object's GetManagedObjects entry written from them: one
    /// lock, and every change of a value drops the entry, so it is never older than the values.
    private struct Stored {
        var values: [String: [String: DBusValue]]
        var managedEntry: [UInt8]?

        mutating func set(_ interface: String, _ name: String, _ value: DBusValue) -> Bool {
            guard values[interface]?[name] != value else { return false }
            values[interface, default: [:]][name] = value
            managedEntry = nil
            ExportedObject.noteChange()
            return true
        }
    }

    /// Counts every change a GetManagedObjects reply could show (a value, an export, an
    /// unexport), process-wide: a kept reply is reused only while the count is the one read
    /// before it was built. Bumped while the change's own lock is held, so a reply built from
    /// an older value always sees a newer count.
    static let changes = Atomic<UInt64>(0)

    static func noteChange() {
        changes.add(1, ordering: .sequentiallyConsistent)
    }

    private let stored: Mutex<Stored>
    private let attachments = Mutex<[WeakCore]>([])

    public init(path: ObjectPath, interfaces: [DBusInterface], objectManager: Bool = false) throws(DBusConnectionError) {
        var tables: [String: Table] = [:]
        var values: [String: [String: DBusValue]] = [:]
        for i in interfaces {
            guard NameRules.isValidInterfaceName(i.name) else { throw Self.bad("invalid interface name '\(i.name)'") }
            guard !StandardInterface.all.contains(i.name) else { throw Self.bad("\(i.name) is provided by the connection") }
            guard tables[i.name] == nil else { throw Self.bad("interface \(i.name) declared twice") }
            var methods: [String: DBusMethod] = [:]
            for m in i.methods {
                guard NameRules.isValidMemberName(m.name), methods[m.name] == nil else {
                    throw Self.bad("invalid or repeated method name '\(m.name)' in \(i.name)")
                }
                _ = try Signature((m.inArgs + m.outArgs).map(\.type))
                methods[m.name] = m
            }
            var properties: [String: DBusProperty] = [:]
            var propertyValues: [String: DBusValue] = [:]
            for p in i.properties {
                guard NameRules.isValidMemberName(p.name), properties[p.name] == nil else {
                    throw Self.bad("invalid or repeated property name '\(p.name)' in \(i.name)")
                }
                try p.type.validate()
                guard p.initialValue.conforms(to: p.type) else {
                    throw Self.bad("initial value of \(i.name).\(p.name) is not a '\(p.type)'")
                }
                try ValueValidation.validateBody([p.initialValue])
                properties[p.name] = p
                propertyValues[p.name] = p.initialValue
            }
            var signals: [String: DBusSignalDeclaration] = [:]
            for s in i.signals {
                guard NameRules.isValidMemberName(s.name), signals[s.name] == nil else {
                    throw Self.bad("invalid or repeated signal name '\(s.name)' in \(i.name)")
                }
                _ = try Signature(s.args.map(\.type))
                signals[s.name] = s
            }
            tables[i.name] = Table(interface: i, methods: methods, properties: properties, signals: signals)
            values[i.name] = propertyValues
        }
        self.path = path
        self.interfaces = interfaces
        self.isObjectManager = objectManager
        self.tables = tables
        self.stored = Mutex(Stored(values: values))
    }

    private static func bad(_ message: String) -> DBusConnectionError {
        DBusConnectionError(.invalidArgument, message)
    }

    /// The current value of a property.
    public func property(_ interface: String, _ name: String) -> DBusValue? {
        stored.withLock { $0.values[interface]?[name] }
    }

    /// All current values of an interface's properties.
    public func properties(_ interface: String) -> [String: DBusValue] {
        stored.withLock { $0.values[interface] ?? [:] }
    }

    /// Stores a property value and, when it changed, announces it with PropertiesChanged on
    /// every connection the object is exported on.
    public func setProperty(_ interface: String, _ name: String, _ value: DBusValue) throws(DBusConnectionError) {
        try setProperties(interface, [(name, value)])
    }

    /// Stores several values of one interface; the changes go out in one PropertiesChanged.
    public func setProperties(_ interface: String, _ changes: [(String, DBusValue)]) throws(DBusConnectionError) {
        guard let table = tables[interface] else { throw Self.bad("\(path) has no interface \(interface)") }
        for (name, value) in changes {
            guard let p = table.properties[name] else { throw Self.bad("\(interface) has no property \(name)") }
            guard value.conforms(to: p.type) else {
                throw Self.bad("\(interface).\(name) is a '\(p.type)', not a '\(value.type)'")
            }
            try ValueValidation.validateBody([value])
        }
        let changed: [(String, DBusValue)] = stored.withLock { stored in
            changes.filter { stored.set(interface, $0.0, $0.1) }
        }
        announce(interface: interface, changed: changed)
    }

    /// Emits PropertiesChanged for `changed` (as declared per property) on every connection.
    func announce(interface: String, changed: [(String, DBusValue)]) {
        guard let table = tables[interface], !changed.isEmpty else { return }
        var withValues: [DBusDictEntry] = []
        var invalidated: [DBusValue] = []
        for (name, value) in changed {
            switch table.properties[name]?.changeSignal {
            case .emits?: withValues.append(DBusDictEntry(.string(name), .variant(value)))
            case .invalidates?: invalidated.append(.string(name))
            default: break
            }
        }
        guard !withValues.isEmpty || !invalidated.isEmpty else { return }
        let signal = OutgoingSignal(
            path: path, interface: StandardInterface.properties, member: "PropertiesChanged",
            arguments: [.string(interface), .dictionary(key: .string, value: .variant, withValues), .array(.string, invalidated)])
        for core in attachedCores() {
            core.submit { state in try? state.sendSignal(signal) }
        }
    }

    /// Emits a signal this object declares, on every connection it is exported on.
    public func emitSignal(interface: String, member: String, arguments: [DBusValue]) throws(DBusConnectionError) {
        guard let declaration = tables[interface]?.signals[member] else {
            throw Self.bad("\(path) declares no signal \(interface).\(member)")
        }
        guard ValueValidation.check(arguments, against: declaration.args.map(\.type)) else {
            throw Self.bad("\(interface).\(member) takes '\(declaration.args.map(\.type.signature).joined())', not '\(arguments.signature)'")
        }
        try ValueValidation.validateBody(arguments)
        let signal = OutgoingSignal(path: path, interface: interface, member: member, arguments: arguments)
        for core in attachedCores() {
            core.submit { state in try? state.sendSignal(signal) }
        }
    }

    /// The interfaces and readable property values, as GetManagedObjects and InterfacesAdded
    /// carry them (`a{sa{sv}}`). The standard interfaces, which every object answers, are left
    /// out, as GDBus leaves them out: at 10,000 objects they were 22% of a GetManagedObjects
    /// reply and told a client nothing (docs/dbus-layer.md).
    func interfacesAndProperties() -> DBusValue {
        let snapshot = stored.withLock { $0.values }
        var entries: [DBusDictEntry] = []
        for i in interfaces {
            let props = i.properties.compactMap { p -> DBusDictEntry? in
                guard let v = snapshot[i.name]?[p.name] else { return nil }
                return DBusDictEntry(.string(p.name), .variant(v))
            }
            entries.append(DBusDictEntry(.string(i.name), .dictionary(key: .string, value: .variant, props)))
        }
        return .dictionary(key: .string, value: .dictionary(key: .string, value: .variant), entries)
    }

    /// Appends this object's entry of a GetManagedObjects reply (`{oa{sa{sv}}}`: the same
    /// interfaces and values as `interfacesAndProperties`, in the same order) in wire format to
    /// `writer`, at an 8-byte boundary. Written once and kept until a value changes (built under
    /// the lock, so a change cannot slip in between). False when a property holds a unix fd.
    func writeManagedEntry(to writer: inout WireWriter) -> Bool {
        let entry: [UInt8]? = stored.withLock { stored in
            if let entry = stored.managedEntry { return entry }
            // Written from offset 0: its padding holds wherever it lands on an 8-byte boundary.
            var own = WireWriter(capacity: 512)
            guard Self.writeEntry(path: path, interfaces: interfaces, values: stored.values, to: &own) else { return nil }
            stored.managedEntry = own.bytes
            return own.bytes
        }
        guard let entry else { return false }
        writer.pad(to: 8)
        writer.bytes.append(contentsOf: entry)
        return true
    }

    private static func writeEntry(path: ObjectPath, interfaces: [DBusInterface],
                                   values snapshot: [String: [String: DBusValue]], to writer: inout WireWriter) -> Bool {
        writer.pad(to: 8)
        writer.string(path.rawValue)
        let interfaceArray = writer.beginArray(elementAlignment: 8)
        for i in interfaces {
            writer.pad(to: 8)
            writer.string(i.name)
            let properties = writer.beginArray(elementAlignment: 8)
            let current = snapshot[i.name]
            for p in i.properties {
                guard let v = current?[p.name] else { continue }
                writer.pad(to: 8)
                writer.string(p.name)
                writer.signature(of: v.type)
                guard writer.write(v) else { return false }
            }
            writer.endArray(properties)
        }
        writer.endArray(interfaceArray)
        return true
    }

    /// Stores a value set over the bus (already checked) and announces it.
    func storeFromBus(interface: String, name: String, value: DBusValue) {
        let changed = stored.withLock { $0.set(interface, name, value) }
        if changed { announce(interface: interface, changed: [(name, value)]) }
    }

    // MARK: Connections

    func attach(_ core: ConnectionCore) {
        attachments.withLock { list in
            list.removeAll { $0.core == nil || $0.core === core }
            list.append(WeakCore(core: core))
        }
    }

    func detach(_ core: ConnectionCore) {
        attachments.withLock { list in list.removeAll { $0.core == nil || $0.core === core } }
    }

    private func attachedCores() -> [ConnectionCore] {
        attachments.withLock { $0.compactMap(\.core) }
    }
}

struct WeakCore: Sendable {
    weak var core: ConnectionCore?
}
