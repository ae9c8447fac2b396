import CDBus
import Synchronization

/// A match rule for signals (D-Bus specification, "Match Rules"). Only set fields constrain.
///
/// With a well-known `sender`, the bus delivers what that name's owner sends, but ownership can
/// change at any time; our subscriptions therefore follow the owner themselves (see
/// `DBusConnection.signals(_:)`) and accept a signal only from the owner at that point of the
/// message stream.
public struct MatchRule: Sendable, Hashable, CustomStringConvertible {
    public var sender: String?
    public var path: ObjectPath?
    public var pathNamespace: ObjectPath?
    public var interface: String?
    public var member: String?
    public var destination: String?
    /// `argN='value'` (string arguments).
    public var arguments: [Int: String]
    /// `argNpath='value'` (string or object path arguments, path-prefix semantics).
    public var argumentPaths: [Int: String]

    public init(sender: String? = nil, path: ObjectPath? = nil, pathNamespace: ObjectPath? = nil,
                interface: String? = nil, member: String? = nil, destination: String? = nil,
                arguments: [Int: String] = [:], argumentPaths: [Int: String] = [:]) {
        self.sender = sender
        self.path = path
        self.pathNamespace = pathNamespace
        self.interface = interface
        self.member = member
        self.destination = destination
        self.arguments = arguments
        self.argumentPaths = argumentPaths
    }

    /// Checks names so the bus does not refuse the rule and nothing unquotable reaches it.
    func validate() throws(DBusConnectionError) {
        if let sender, !NameRules.isValidBusName(sender) { throw DBusConnectionError(.invalidArgument, "invalid sender '\(sender)'") }
        if let interface, !NameRules.isValidInterfaceName(interface) { throw DBusConnectionError(.invalidArgument, "invalid interface '\(interface)'") }
        if let member, !NameRules.isValidMemberName(member) { throw DBusConnectionError(.invalidArgument, "invalid member '\(member)'") }
        if let destination, !NameRules.isValidBusName(destination) { throw DBusConnectionError(.invalidArgument, "invalid destination '\(destination)'") }
        for n in Array(arguments.keys) + Array(argumentPaths.keys) where !(0...63).contains(n) {
            throw DBusConnectionError(.invalidArgument, "match argument index \(n) out of 0...63")
        }
        for s in Array(arguments.values) + Array(argumentPaths.values) where s.utf8.contains(0) {
            throw DBusConnectionError(.invalidArgument, "match argument contains NUL")
        }
    }

    /// The rule as the bus parses it, with `'` quoted as `'\''`.
    public var description: String {
        func quote(_ s: String) -> String {
            "'" + s.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
        }
        var parts = ["type='signal'"]
        if let sender { parts.append("sender=\(quote(sender))") }
        if let path { parts.append("path=\(quote(path.rawValue))") }
        if let pathNamespace { parts.append("path_namespace=\(quote(pathNamespace.rawValue))") }
        if let interface { parts.append("interface=\(quote(interface))") }
        if let member { parts.append("member=\(quote(member))") }
        if let destination { parts.append("destination=\(quote(destination))") }
        for (n, v) in arguments.sorted(by: { $0.key < $1.key }) { parts.append("arg\(n)=\(quote(v))") }
        for (n, v) in argumentPaths.sorted(by: { $0.key < $1.key }) { parts.append("arg\(n)path=\(quote(v))") }
        return parts.joined(separator: ",")
    }

    /// Whether the sender needs following: a well-known name other than the bus itself.
    var followedSender: String? {
        guard let sender, !sender.hasPrefix(":"), sender != BusDaemon.name else { return nil }
        return sender
    }

    /// Local matching of a received signal (the bus matched too, but one connection receives
    /// the union of all its rules). The sender is checked here only when it is a unique name or
    /// the bus; a well-known sender is checked against the followed owner by the route.
    func matches(_ s: ReceivedSignal) -> Bool {
        if let sender, followedSender == nil, s.sender != sender { return false }
        if let path, s.path != path.rawValue { return false }
        if let ns = pathNamespace {
            if ns.rawValue != "/" && s.path != ns.rawValue && !s.path.hasPrefix(ns.rawValue + "/") { return false }
        }
        if let interface, s.interface != interface { return false }
        if let member, s.member != member { return false }
        if let destination, s.destination != destination { return false }
        if !arguments.isEmpty || !argumentPaths.isEmpty {
            let args = s.arguments
            for (n, v) in arguments {
                guard n < args.count, args[n].stringValue == v else { return false }
            }
            for (n, v) in argumentPaths {
                guard n < args.count else { return false }
                let a: String
                switch args[n] {
                case .string(let x): a = x
                case .objectPath(let p): a = p.rawValue
                default: return false
                }
                let prefixMatch = (v.hasSuffix("/") && a.hasPrefix(v)) || (a.hasSuffix("/") && v.hasPrefix(a))
                guard a == v || prefixMatch else { return false }
            }
        }
        return true
    }
}

/// A signal received by a subscription.
public struct DBusSignal: Sendable, Hashable {
    /// The unique name of the sender (or `org.freedesktop.DBus` for the bus).
    public var sender: String
    public var path: ObjectPath
    public var interface: String
    public var member: String
    public var arguments: [DBusValue]

    public init(sender: String, path: ObjectPath, interface: String, member: String, arguments: [DBusValue]) {
        self.sender = sender
        self.path = path
        self.interface = interface
        self.member = member
        self.arguments = arguments
    }
}

/// A signal as read on the connection thread, arguments read lazily (only when a rule needs
/// them or a route delivers it).
final class ReceivedSignal {
    let message: OpaquePointer
    let sender: String
    let path: String
    let interface: String
    let member: String
    let destination: String?
    private var cached: [DBusValue]?
    var malformed = false

    init?(_ message: OpaquePointer) {
        guard let p = dbus_message_get_path(message), let i = dbus_message_get_interface(message),
              let m = dbus_message_get_member(message) else { return nil }
        self.message = message
        sender = dbus_message_get_sender(message).map { String(cString: $0) } ?? ""
        path = String(cString: p)
        interface = String(cString: i)
        member = String(cString: m)
        destination = dbus_message_get_destination(message).map { String(cString: $0) }
    }

    /// Arguments read once (without descriptors: those are read per delivery).
    var arguments: [DBusValue] {
        if let cached { return cached }
        var values: [DBusValue] = []
        do { values = try Marshal.read(message) } catch { malformed = true }
        // This copy is for matching only (its descriptors are closed at once, not when the
        // signal is done); each delivery reads descriptors of its own.
        if Marshal.containsDescriptors(values) { Marshal.closeDescriptors(in: values) }
        cached = values
        return values
    }

    /// A fresh read for one subscriber: received descriptors are duplicated per reader.
    func deliverable() -> DBusSignal? {
        let values: [DBusValue]
        if Marshal.containsDescriptors(arguments) {
            guard let fresh = try? Marshal.read(message) else { return nil }
            values = fresh
        } else {
            values = arguments
        }
        guard !malformed, NameRules.isValidObjectPath(path) else { return nil }
        return DBusSignal(sender: sender, path: ObjectPath(trusted: path), interface: interface, member: member, arguments: values)
    }
}

/// What a name-owner watch yields, in the order the bus sent it.
public enum NameOwnerEvent: Sendable, Hashable {
    /// The name got a new owner (`new`), lost it (`new == nil`) or changed hands.
    case ownerChanged(old: String?, new: String?)
    /// A signal matching one of the watch's rules, sent by the current owner.
    case signal(DBusSignal)
    /// A signal matching one of the watch's rules from a sender that is not the current owner
    /// (`owner`, nil when the name has none). Only with `reportingOthers`; never to be trusted,
    /// only to be logged.
    case ignoredSignal(DBusSignal, owner: String?)
    /// The reply to `NameOwnerWatch.callOwner`, at its place in the message stream: after every
    /// signal the owner sent before it, before every signal the owner sent after it.
    case ownerReply(OwnerCallReply)
}

/// The reply to a call made with `NameOwnerWatch.callOwner`. Local failures (no owner, timeout,
/// connection lost) are reported as the D-Bus errors libdbus uses for them (`NameHasNoOwner`,
/// `NoReply`, `Disconnected`), so one `DBusError` covers every way the call can fail.
public struct OwnerCallReply: Sendable, Hashable {
    /// The number `callOwner` returned.
    public var id: UInt64
    /// The unique name the call went to (nil when the name had no owner).
    public var owner: String?
    public var result: Result<[DBusValue], DBusError>

    public init(id: UInt64, owner: String?, result: Result<[DBusValue], DBusError>) {
        self.id = id
        self.owner = owner
        self.result = result
    }
}

/// The connection thread's side of a subscription.
final class SignalRoute {
    enum Output {
        case signals(AsyncStream<DBusSignal>.Continuation)
        case ownerEvents(AsyncStream<NameOwnerEvent>.Continuation, ownerBox: OwnerBox)
    }

    let id: UInt64
    let rules: [MatchRule]
    /// The rules as given to AddMatch (RemoveMatch needs the same text).
    let busRules: [String]
    let output: Output
    /// The followed well-known name and its owner as of the last message processed.
    let followed: String?
    var owner: String?
    /// GetNameOwner has answered; until then signals from the followed name are not trusted.
    var ownerKnown = false
    /// Matching signals from senders other than the owner are yielded as `.ignoredSignal`.
    let reportsOthers: Bool

    init(id: UInt64, rules: [MatchRule], busRules: [String], followed: String?, reportsOthers: Bool = false, output: Output) {
        self.id = id
        self.rules = rules
        self.busRules = busRules
        self.followed = followed
        self.reportsOthers = reportsOthers
        self.output = output
    }

    func finish(throwing error: (any Error)? = nil) {
        switch output {
        case .signals(let c): c.finish()
        case .ownerEvents(let c, _): c.finish()
        }
    }

    func setOwner(_ new: String?, announce: Bool) {
        let old = owner
        owner = new
        if case .ownerEvents(let c, let box) = output {
            box.value.withLock { $0 = new }
            if announce && old != new { c.yield(.ownerChanged(old: old, new: new)) }
        }
    }

    func deliver(_ signal: DBusSignal) {
        switch output {
        case .signals(let c): c.yield(signal)
        case .ownerEvents(let c, _): c.yield(.signal(signal))
        }
    }

    func deliverIgnored(_ signal: DBusSignal) {
        if case .ownerEvents(let c, _) = output { c.yield(.ignoredSignal(signal, owner: owner)) }
    }

    func deliverReply(_ reply: OwnerCallReply) {
        if case .ownerEvents(let c, _) = output { c.yield(.ownerReply(reply)) }
    }
}

extension LoopState {
    /// Offers a received signal to the connection's own handling (name events) and to every
    /// subscription, in arrival order.
    func routeSignal(_ message: OpaquePointer) {
        guard let signal = ReceivedSignal(message) else { return }
        if signal.sender == BusDaemon.name && signal.interface == BusDaemon.interface {
            switch signal.member {
            case "NameAcquired", "NameLost":
                if signal.destination == core.uniqueName.withLock({ $0 }), let name = signal.arguments.first?.stringValue {
                    core.publish(signal.member == "NameAcquired" ? .nameAcquired(name) : .nameLost(name))
                }
            case "NameOwnerChanged":
                applyOwnerChange(signal)
            default:
                break
            }
        }
        guard !subscriptions.isEmpty else { return }
        for route in subscriptions.values.sorted(by: { $0.id < $1.id }) {
            guard route.rules.contains(where: { $0.matches(signal) }) else { continue }
            if route.followed != nil {
                guard route.ownerKnown else { continue }
                guard let owner = route.owner, owner == signal.sender else {
                    if route.reportsOthers, let deliverable = signal.deliverable() { route.deliverIgnored(deliverable) }
                    continue
                }
            }
            if let deliverable = signal.deliverable() { route.deliver(deliverable) }
        }
    }

    private func applyOwnerChange(_ signal: ReceivedSignal) {
        let args = signal.arguments
        guard args.count == 3, let name = args[0].stringValue, let new = args[2].stringValue else { return }
        for route in subscriptions.values where route.followed == name {
            // Before GetNameOwner answers, its reply (which comes later) decides.
            route.setOwner(new.isEmpty ? nil : new, announce: route.ownerKnown)
        }
    }
}

extension ConnectionCore {
    func publish(_ event: ConnectionEvent) {
        let subscribers = events.withLock { Array($0.subscribers.values) }
        for s in subscribers { s.yield(event) }
    }
}
