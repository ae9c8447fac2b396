import CDBus
import Glibc
import Synchronization
import SystemSupport

/// Where to connect.
public enum BusAddress: Sendable, Hashable {
    /// `DBUS_SYSTEM_BUS_ADDRESS`, else `unix:path=/run/dbus/system_bus_socket`.
    case system
    /// `DBUS_SESSION_BUS_ADDRESS`.
    case session
    /// Any D-Bus address, e.g. `unix:path=/tmp/bus.sock`.
    case address(String)

    public func resolve() throws(DBusConnectionError) -> String {
        switch self {
        case .system:
            if let env = getenv("DBUS_SYSTEM_BUS_ADDRESS") { return String(cString: env) }
            return "unix:path=/run/dbus/system_bus_socket"
        case .session:
            guard let env = getenv("DBUS_SESSION_BUS_ADDRESS") else {
                throw DBusConnectionError(.connectFailed, "DBUS_SESSION_BUS_ADDRESS is not set")
            }
            return String(cString: env)
        case .address(let a):
            return a
        }
    }
}

/// What happens to a connection, for its owner.
public enum ConnectionEvent: Sendable, Hashable {
    case nameAcquired(String)
    case nameLost(String)
    /// The connection has ended (code `.disconnected` when the bus went away, `.closed` after
    /// `close()`); every pending call has failed. Open a new connection to go on.
    case disconnected(DBusConnectionError)
}

/// Flags of RequestName.
public struct RequestNameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let allowReplacement = RequestNameFlags(rawValue: 1)
    public static let replaceExisting = RequestNameFlags(rawValue: 2)
    public static let doNotQueue = RequestNameFlags(rawValue: 4)
}

public enum RequestNameReply: UInt32, Sendable, Hashable {
    case primaryOwner = 1
    case inQueue = 2
    case exists = 3
    case alreadyOwner = 4
}

/// The credentials of a connection on the bus (GetConnectionCredentials).
public struct Credentials: Sendable, Hashable {
    public var uid: UInt32
    public var pid: UInt32?
    /// Supplementary group ids (with the primary group), when the bus knows them.
    public var groups: [UInt32]?
}

/// A connection to a bus (or a peer), owned by a thread of its own that runs an epoll loop over
/// libdbus' watches and timeouts. Every method may be called from any thread or task.
///
/// Dropping the last reference closes the connection.
public final class DBusConnection: Sendable {
    let core: ConnectionCore
    private static let nextID = Atomic<UInt64>(1)
    static func newID() -> UInt64 { nextID.add(1, ordering: .relaxed).newValue }

    private init(core: ConnectionCore) { self.core = core }

    deinit {
        core.close(reason: DBusConnectionError(.closed, "the connection was released"))
    }

    /// Connects; as a bus client (`busClient`) it registers with `Hello` before returning.
    public static func connect(_ address: BusAddress, busClient: Bool = true,
                               timeout: Duration = .seconds(25)) async throws -> DBusConnection {
        let resolved = try address.resolve()
        let core = try ConnectionCore()
        let connection = DBusConnection(core: core)
        core.loopStateForSetup.handle = connection
        try await withCheckedThrowingContinuation { (ready: CheckedContinuation<Void, any Error>) in
            do {
                try core.start(address: resolved, busClient: busClient, timeout: timeout, ready: ready)
            } catch {
                ready.resume(throwing: error)
            }
        }
        return connection
    }

    /// Arms a one-shot: the next thread that wakes the connection thread to send something
    /// yields its CPU right after (`sched_yield`). The kernel usually wakes the connection thread
    /// on its waker's CPU, so a waker that goes on with a long step holds the message back until
    /// the step ends or is preempted. An event loop that emits signals in the middle of its steps
    /// arms it once per iteration: the first message of each step goes out at once, and a busy
    /// loop pays one yield a step, not one a message (docs/dbus-layer.md, "Sending signals").
    public func yieldOnNextWake() {
        core.yieldOnWake.store(true, ordering: .relaxed)
    }

    /// Our unique name on the bus (nil on a peer-to-peer connection).
    public var uniqueName: String? { core.uniqueName.withLock { $0 } }

    /// False once the connection has ended.
    public var isConnected: Bool { core.events.withLock { $0.terminal == nil } }

    /// Closes the connection: pending calls fail with `.closed`, subscriptions end, and the
    /// `events` streams get `.disconnected(.closed)`.
    public func close() {
        core.close(reason: DBusConnectionError(.closed, "the connection was closed"))
    }

    /// A new stream of this connection's events. A stream made after the connection ended
    /// yields the final `.disconnected` at once.
    public var events: AsyncStream<ConnectionEvent> {
        let (stream, continuation) = AsyncStream<ConnectionEvent>.makeStream()
        let registered = core.events.withLock { hub -> UInt64? in
            if let terminal = hub.terminal {
                continuation.yield(terminal)
                continuation.finish()
                return nil
            }
            hub.nextID += 1
            hub.subscribers[hub.nextID] = continuation
            return hub.nextID
        }
        if let id = registered {
            continuation.onTermination = { [weak core] _ in
                _ = core?.events.withLock { $0.subscribers.removeValue(forKey: id) }
            }
        }
        return stream
    }

    // MARK: Calls

    /// Calls a method and returns its reply's arguments. Throws `DBusError` for an error reply,
    /// `DBusConnectionError` (`.timeout`, `.disconnected`, `.invalidArgument`, ...) for local
    /// failures, `CancellationError` when the task is cancelled.
    ///
    /// `signature`, when given, is checked against `arguments` before anything is sent.
    /// `autoStart: false` sets NO_AUTO_START: the bus answers ServiceUnknown instead of
    /// activating a destination that has no owner.
    public func call(destination: String?, path: ObjectPath, interface: String?, member: String,
                     arguments: [DBusValue] = [], signature: Signature? = nil,
                     timeout: Duration = .seconds(25), autoStart: Bool = true) async throws -> [DBusValue] {
        if let destination, !NameRules.isValidBusName(destination) {
            throw DBusConnectionError(.invalidArgument, "invalid destination '\(destination)'")
        }
        if let interface, !NameRules.isValidInterfaceName(interface) {
            throw DBusConnectionError(.invalidArgument, "invalid interface '\(interface)'")
        }
        guard NameRules.isValidMemberName(member) else {
            throw DBusConnectionError(.invalidArgument, "invalid member '\(member)'")
        }
        if let signature, !ValueValidation.check(arguments, against: signature.types) {
            throw DBusConnectionError(.invalidArgument, "arguments '\(arguments.signature)' do not match '\(signature)'")
        }
        if !arguments.isEmpty { try ValueValidation.validateBody(arguments) }
        let request = OutgoingCall(destination: destination, path: path, interface: interface, member: member,
                                   arguments: arguments, timeoutNanoseconds: timeoutNanoseconds(timeout), autoStart: autoStart)
        return try await perform(request)
    }

    func perform(_ request: OutgoingCall) async throws -> [DBusValue] {
        let id = Self.nextID.add(1, ordering: .relaxed).newValue
        let core = self.core
        let token = CallToken()
        // The reply is built on the connection thread; the pairing release is in
        // PendingCall.Completion.run (docs/sanitizers.md says why TSan needs it).
        defer { bgw_tsan_acquire(token.handoffAddress) }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[DBusValue], any Error>) in
                let accepted = core.submit { state in
                    // Cancelled before it was sent: the cancel work below found nothing to end.
                    guard !token.cancelled.load(ordering: .acquiring) else {
                        continuation.resume(throwing: CancellationError())
                        return
                    }
                    state.startCall(request, id: id, completion: .continuation(continuation, handoff: token.handoffAddress))
                }
                if !accepted {
                    continuation.resume(throwing: core.endedError)
                }
            }
        } onCancel: {
            token.cancelled.store(true, ordering: .releasing)
            core.submit { $0.cancelCall(id: id) }
        }
    }

    /// Calls a method of the bus daemon itself.
    func callBus(_ member: String, _ arguments: [DBusValue] = [], timeout: Duration = .seconds(25)) async throws -> [DBusValue] {
        try await perform(OutgoingCall(destination: BusDaemon.name, path: BusDaemon.path, interface: BusDaemon.interface,
                                       member: member, arguments: arguments, timeoutNanoseconds: timeoutNanoseconds(timeout)))
    }

    // MARK: Signals out

    /// Emits a signal (to everyone matching it, or to `destination` only).
    public func emitSignal(path: ObjectPath, interface: String, member: String, arguments: [DBusValue] = [],
                           destination: String? = nil) throws(DBusConnectionError) {
        guard NameRules.isValidInterfaceName(interface) else {
            throw DBusConnectionError(.invalidArgument, "invalid interface '\(interface)'")
        }
        guard NameRules.isValidMemberName(member) else {
            throw DBusConnectionError(.invalidArgument, "invalid member '\(member)'")
        }
        if let destination, !NameRules.isValidBusName(destination) {
            throw DBusConnectionError(.invalidArgument, "invalid destination '\(destination)'")
        }
        try ValueValidation.validateBody(arguments)
        let signal = OutgoingSignal(path: path, interface: interface, member: member, arguments: arguments, destination: destination)
        guard core.submit({ state in try? state.sendSignal(signal) }) else { throw core.endedError }
    }

    // MARK: Signals in

    /// Subscribes to signals matching `rule` (AddMatch on the bus; RemoveMatch when the
    /// subscription is cancelled or released). Returns once the bus has the rule, so every
    /// matching signal sent after this returns is seen.
    ///
    /// With a well-known `sender`, only signals from that name's current owner are delivered:
    /// the subscription follows the owner (NameOwnerChanged, subscribed before GetNameOwner).
    public func signals(_ rule: MatchRule) async throws -> SignalSubscription {
        let (stream, continuation) = AsyncStream<DBusSignal>.makeStream()
        let id = try await subscribe(rules: [rule], followed: rule.followedSender, output: .signals(continuation))
        return SignalSubscription(stream: stream, cancel: SubscriptionCanceller(core: core, id: id))
    }

    /// Follows the owner of `name`: the owner now (`initialOwner`) and, in bus order, each
    /// owner change and each signal matching `signals` that the current owner sends. Subscribes
    /// before it asks for the owner, so no change is lost in between.
    ///
    /// With `reportingOthers`, the bus delivers matching signals from every sender, and those
    /// not sent by the current owner are yielded as `.ignoredSignal` (for a log line naming the
    /// sender) instead of being dropped unseen by the bus.
    public func watchNameOwner(_ name: String, signals: [MatchRule] = [], reportingOthers: Bool = false) async throws -> NameOwnerWatch {
        guard NameRules.isValidBusName(name), !name.hasPrefix(":") else {
            throw DBusConnectionError(.invalidArgument, "'\(name)' is not a well-known bus name")
        }
        // Locally the sender is always the followed name (checked against the owner by the
        // route); the bus filters by it too unless other senders are to be reported.
        let rules = signals.map { r -> MatchRule in
            var r = r
            r.sender = name
            return r
        }
        let busSignalRules = reportingOthers ? signals.map { r -> MatchRule in
            var r = r
            r.sender = nil
            return r
        } : rules
        let (stream, continuation) = AsyncStream<NameOwnerEvent>.makeStream()
        let owner = OwnerBox()
        let id = try await subscribe(rules: rules, busSignalRules: busSignalRules, followed: name, reportsOthers: reportingOthers,
                                     output: .ownerEvents(continuation, ownerBox: owner))
        return NameOwnerWatch(name: name, initialOwner: owner.value.withLock { $0 }, owner: owner, stream: stream,
                              core: core, id: id)
    }

    private func subscribe(rules: [MatchRule], busSignalRules: [MatchRule]? = nil, followed: String?, reportsOthers: Bool = false,
                           output: SignalRoute.Output) async throws -> UInt64 {
        for r in rules { try r.validate() }
        let id = Self.nextID.add(1, ordering: .relaxed).newValue
        var allRules = (busSignalRules ?? rules).map(\.description)
        if let followed {
            allRules.append(MatchRule(sender: BusDaemon.name, path: BusDaemon.path, interface: BusDaemon.interface,
                                      member: "NameOwnerChanged", arguments: [0: followed]).description)
        }
        let busRules = allRules
        let route = SendableRoute(route: SignalRoute(id: id, rules: rules, busRules: busRules, followed: followed,
                                                     reportsOthers: reportsOthers, output: output))
        let core = self.core
        // Registered locally first, so nothing matching is dropped once the bus has the rule.
        guard core.submit({ state in state.subscriptions[id] = route.route }) else { throw core.endedError }
        do {
            for rule in busRules {
                _ = try await callBus("AddMatch", [.string(rule)])
            }
            if let followed {
                try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
                    let accepted = core.submit { state in
                        state.readOwner(followed, subscription: id, done: done)
                    }
                    if !accepted { done.resume(throwing: core.endedError) }
                }
            }
        } catch {
            core.submit { state in state.removeSubscription(id, busRules: busRules) }
            throw error
        }
        return id
    }

    // MARK: Names

    public func requestName(_ name: String, flags: RequestNameFlags = []) async throws -> RequestNameReply {
        guard NameRules.isValidBusName(name), !name.hasPrefix(":") else {
            throw DBusConnectionError(.invalidArgument, "'\(name)' is not a well-known bus name")
        }
        let reply = try await callBus("RequestName", [.string(name), .uint32(flags.rawValue)])
        guard let code = reply.first?.uint32Value, let result = RequestNameReply(rawValue: code) else {
            throw DBusConnectionError(.invalidMessage, "RequestName answered \(reply)")
        }
        return result
    }

    /// Releases a name; returns false when we did not own it (or queue for it).
    @discardableResult
    public func releaseName(_ name: String) async throws -> Bool {
        guard NameRules.isValidBusName(name) else {
            throw DBusConnectionError(.invalidArgument, "invalid bus name '\(name)'")
        }
        let reply = try await callBus("ReleaseName", [.string(name)])
        return reply.first?.uint32Value == 1
    }

    /// The unique name owning `name`, or nil when nobody does.
    public func nameOwner(_ name: String) async throws -> String? {
        guard NameRules.isValidBusName(name) else {
            throw DBusConnectionError(.invalidArgument, "invalid bus name '\(name)'")
        }
        do {
            return try await callBus("GetNameOwner", [.string(name)]).first?.stringValue
        } catch let error as DBusError where error.name == DBusError.Name.nameHasNoOwner {
            return nil
        }
    }

    /// The credentials of a bus connection, e.g. the sender of a method call.
    public func credentials(of sender: String) async throws -> Credentials {
        guard NameRules.isValidBusName(sender) else {
            throw DBusConnectionError(.invalidArgument, "invalid bus name '\(sender)'")
        }
        let reply = try await callBus("GetConnectionCredentials", [.string(sender)])
        guard let dict = reply.first?.stringKeyedDictionary,
              let uid = dict["UnixUserID"]?.unwrappingVariant.uint32Value else {
            throw DBusConnectionError(.invalidMessage, "GetConnectionCredentials answered no UnixUserID")
        }
        let groups = dict["UnixGroupIDs"]?.unwrappingVariant.arrayValue?.compactMap(\.uint32Value)
        return Credentials(uid: uid, pid: dict["ProcessID"]?.unwrappingVariant.uint32Value, groups: groups)
    }

    // MARK: Objects

    /// Exports `object` at its path. Throws `.objectPathInUse` when the path is taken.
    public func export(_ object: ExportedObject) throws(DBusConnectionError) {
        guard isConnected else { throw core.endedError }
        let manager: ObjectPath? = try core.exports.withLock { (registry) throws(DBusConnectionError) -> ObjectPath? in
            guard registry[object.path] == nil else {
                throw DBusConnectionError(.objectPathInUse, "an object is already exported at \(object.path)")
            }
            registry[object.path] = object
            ExportedObject.noteChange()
            return Self.nearestManager(of: object.path, in: registry)
        }
        object.attach(core)
        if let manager {
            let signal = OutgoingSignal(path: manager, interface: StandardInterface.objectManager, member: "InterfacesAdded",
                                        arguments: [.objectPath(object.path), object.interfacesAndProperties()])
            core.submit { state in try? state.sendSignal(signal) }
        }
    }

    /// Removes the object at `path` (nothing happens if there is none).
    public func unexport(_ path: ObjectPath) {
        let removed = core.exports.withLock { registry -> (ExportedObject, ObjectPath?)? in
            guard let object = registry.removeValue(forKey: path) else { return nil }
            ExportedObject.noteChange()
            return (object, Self.nearestManager(of: path, in: registry))
        }
        guard let (object, manager) = removed else { return }
        object.detach(core)
        if let manager {
            let names = object.interfaces.map(\.name)
            let signal = OutgoingSignal(path: manager, interface: StandardInterface.objectManager, member: "InterfacesRemoved",
                                        arguments: [.objectPath(path), .stringArray(names)])
            core.submit { state in try? state.sendSignal(signal) }
        }
    }

    /// The objects exported on this connection.
    public var exportedObjects: [ExportedObject] {
        core.exports.withLock { Array($0.values) }
    }

    /// The closest ancestor that is an ObjectManager: one lookup per ancestor, not a scan of
    /// every object (exporting 10,000 workers one by one was quadratic, issue 15).
    static func nearestManager(of path: ObjectPath, in registry: [ObjectPath: ExportedObject]) -> ObjectPath? {
        var ancestor = path.rawValue[...]
        while ancestor != "/", let slash = ancestor.lastIndex(of: "/") {
            ancestor = slash == ancestor.startIndex ? "/" : ancestor[..<slash]
            let candidate = ObjectPath(trusted: String(ancestor))
            if registry[candidate]?.isObjectManager == true { return candidate }
        }
        return nil
    }
}

extension ConnectionCore {
    /// The error for work refused because the connection has ended.
    var endedError: DBusConnectionError {
        if case .disconnected(let e)? = events.withLock({ $0.terminal }) { return e }
        return DBusConnectionError(.disconnected, "the connection has ended")
    }
}

/// Moves a route, created off the connection thread, into the work closure that registers it.
/// `@unchecked Sendable`: the creating task never touches the route after handing it over;
/// from then on only the connection thread does.
final class SendableRoute: @unchecked Sendable {
    let route: SignalRoute
    init(route: SignalRoute) { self.route = route }
}

final class OwnerBox: Sendable {
    let value = Mutex<String?>(nil)
}

final class CallToken: Sendable {
    let cancelled = Atomic<Bool>(false)

    /// Where ThreadSanitizer is told the reply is handed over (a no-op outside TSan builds):
    /// this token's address, unique while the call waits (the awaiting task holds the token);
    /// only a key for TSan, never dereferenced, so no retain is needed.
    /// The runtime resumes a continuation that has not suspended yet through an atomic TSan
    /// cannot see; without this pair it reports the reply's values as raced (docs/sanitizers.md).
    var handoffAddress: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
}

/// Ends a subscription exactly once: removes the route and the bus rules.
final class SubscriptionCanceller: Sendable {
    private let core: ConnectionCore
    private let id: UInt64
    private let done = Atomic<Bool>(false)

    init(core: ConnectionCore, id: UInt64) {
        self.core = core
        self.id = id
    }

    func cancel() {
        guard !done.exchange(true, ordering: .relaxed) else { return }
        let id = self.id
        core.submit { state in state.removeSubscription(id, busRules: nil) }
    }

    deinit { cancel() }
}

/// Signals matching a rule, in the order received. Ends when cancelled, released, or when the
/// connection ends.
public struct SignalSubscription: AsyncSequence, Sendable {
    public typealias Element = DBusSignal
    let stream: AsyncStream<DBusSignal>
    let canceller: SubscriptionCanceller

    init(stream: AsyncStream<DBusSignal>, cancel: SubscriptionCanceller) {
        self.stream = stream
        self.canceller = cancel
    }

    /// Removes the match rule and ends the sequence.
    public func cancel() { canceller.cancel() }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncStream<DBusSignal>.AsyncIterator
        let canceller: SubscriptionCanceller
        public mutating func next() async -> DBusSignal? { await base.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: stream.makeAsyncIterator(), canceller: canceller)
    }
}

/// The owner of a well-known name, followed (see `DBusConnection.watchNameOwner`).
public struct NameOwnerWatch: AsyncSequence, Sendable {
    public typealias Element = NameOwnerEvent
    public let name: String
    /// The owner when the watch started.
    public let initialOwner: String?
    let owner: OwnerBox
    let stream: AsyncStream<NameOwnerEvent>
    let canceller: SubscriptionCanceller
    let core: ConnectionCore
    let id: UInt64

    init(name: String, initialOwner: String?, owner: OwnerBox, stream: AsyncStream<NameOwnerEvent>, core: ConnectionCore, id: UInt64) {
        self.name = name
        self.initialOwner = initialOwner
        self.owner = owner
        self.stream = stream
        self.core = core
        self.id = id
        self.canceller = SubscriptionCanceller(core: core, id: id)
    }

    /// The owner as of the last message the connection processed (it may be ahead of the
    /// events this sequence has yielded so far).
    public var currentOwner: String? { owner.value.withLock { $0 } }

    public func cancel() { canceller.cancel() }

    /// Calls a method of the current owner (its unique name, as of the last message the
    /// connection processed) and yields the reply into this sequence as `.ownerReply` at the
    /// place the reply has in the message stream. As the bus keeps one sender's messages in
    /// order, a reply comes after every signal the owner sent before answering and before
    /// every signal it sent after: a state read this way and the change signals fall into one
    /// order, and a read can neither hide a newer signal nor be hidden by an older one.
    ///
    /// Returns the number that the reply carries. With no owner the reply is
    /// `NameHasNoOwner`; if the watch or the connection has ended, nothing is yielded.
    @discardableResult
    public func callOwner(path: ObjectPath, interface: String?, member: String, arguments: [DBusValue] = [],
                          timeout: Duration = .seconds(25)) throws(DBusConnectionError) -> UInt64 {
        if let interface, !NameRules.isValidInterfaceName(interface) {
            throw DBusConnectionError(.invalidArgument, "invalid interface '\(interface)'")
        }
        guard NameRules.isValidMemberName(member) else {
            throw DBusConnectionError(.invalidArgument, "invalid member '\(member)'")
        }
        if !arguments.isEmpty { try ValueValidation.validateBody(arguments) }
        let callID = DBusConnection.newID()
        let routeID = id
        let template = OutgoingCall(destination: nil, path: path, interface: interface, member: member,
                                    arguments: arguments, timeoutNanoseconds: timeoutNanoseconds(timeout))
        core.submit { state in state.callOwner(route: routeID, callID: callID, template) }
        return callID
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncStream<NameOwnerEvent>.AsyncIterator
        let canceller: SubscriptionCanceller
        public mutating func next() async -> NameOwnerEvent? { await base.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: stream.makeAsyncIterator(), canceller: canceller)
    }
}

extension LoopState {
    /// GetNameOwner for a followed name; its reply is applied in message order.
    func readOwner(_ name: String, subscription id: UInt64, done: CheckedContinuation<Void, any Error>) {
        let call = OutgoingCall(destination: BusDaemon.name, path: BusDaemon.path, interface: BusDaemon.interface,
                                member: "GetNameOwner", arguments: [.string(name)], timeoutNanoseconds: 25_000_000_000)
        startCall(call, id: 0, completion: .callback { state, result in
            guard let route = state.subscriptions[id] else {
                done.resume(throwing: state.finished ? state.notConnectedError : CancellationError())
                return
            }
            switch result {
            case .success(let values):
                route.setOwner(values.first?.stringValue, announce: false)
            case .failure(let error as DBusError) where error.name == DBusError.Name.nameHasNoOwner:
                route.setOwner(nil, announce: false)
            case .failure(let error):
                done.resume(throwing: error)
                return
            }
            route.ownerKnown = true
            done.resume()
        })
    }

    /// `NameOwnerWatch.callOwner` on the connection thread: the owner is taken from the route
    /// as of this point of the message stream, and the reply is yielded in message order.
    func callOwner(route routeID: UInt64, callID: UInt64, _ template: OutgoingCall) {
        guard let route = subscriptions[routeID] else { return }
        guard let owner = route.owner else {
            route.deliverReply(OwnerCallReply(id: callID, owner: nil, result: .failure(
                DBusError(DBusError.Name.nameHasNoOwner, "\(route.followed ?? "the name") has no owner"))))
            return
        }
        var call = template
        call.destination = owner
        startCall(call, id: callID, completion: .callback { state, result in
            guard let route = state.subscriptions[routeID] else { return }
            route.deliverReply(OwnerCallReply(id: callID, owner: owner, result: result.mapError(Self.asDBusError)))
        })
    }

    /// A local failure in the words libdbus uses for it, so a reply carries one error type.
    static func asDBusError(_ error: any Error) -> DBusError {
        if let error = error as? DBusError { return error }
        if let error = error as? DBusConnectionError {
            switch error.code {
            case .timeout: return DBusError(DBusError.Name.noReply, error.message)
            case .disconnected, .closed: return DBusError("org.freedesktop.DBus.Error.Disconnected", error.message)
            default: return DBusError.failed(error.description)
            }
        }
        return DBusError.failed("\(error)")
    }

    func removeSubscription(_ id: UInt64, busRules: [String]?) {
        guard let route = subscriptions.removeValue(forKey: id) else { return }
        route.finish()
        let rules = busRules ?? route.busRules
        for rule in rules {
            sendNoReply(OutgoingCall(destination: BusDaemon.name, path: BusDaemon.path, interface: BusDaemon.interface,
                                     member: "RemoveMatch", arguments: [.string(rule)], timeoutNanoseconds: 0))
        }
    }
}
