import CDBus
import Glibc

/// Where a reply goes: enough to answer without keeping the call's message.
struct ReplyAddress: Sendable {
    var destination: String?
    var serial: UInt32
    var noReply: Bool
}

extension LoopState {
    /// Answers a method call addressed to us: standard interfaces here on the connection thread,
    /// user methods in a task on this connection's executor. Never trusts the message: every
    /// mismatch is an error reply, never a crash.
    func dispatchMethodCall(_ message: OpaquePointer) {
        guard let pathC = dbus_message_get_path(message), let memberC = dbus_message_get_member(message) else { return }
        let path = ObjectPath(trusted: String(cString: pathC))
        let member = String(cString: memberC)
        let interface = dbus_message_get_interface(message).map { String(cString: $0) }
        let sender = dbus_message_get_sender(message).map { String(cString: $0) }
        let signature = dbus_message_get_signature(message).map { String(cString: $0) } ?? ""
        let reply = ReplyAddress(destination: sender, serial: dbus_message_get_serial(message),
                                 noReply: dbus_message_get_no_reply(message) != 0)
        // Property changes from Set go out before the reply, at once.
        inlineAllowed = true
        defer { inlineAllowed = false }

        func fail(_ error: DBusError) { sendReply(reply, .failure(error), outTypes: []) }
        func expect(_ wanted: String) -> Bool {
            guard signature == wanted else {
                fail(.invalidArgs("Invalid arguments for \(interface ?? "").\(member): expected '\(wanted)', got '\(signature)'"))
                return false
            }
            return true
        }

        // Peer answers on every path, as libdbus' own connections do.
        if interface == StandardInterface.peer || (interface == nil && (member == "Ping" || member == "GetMachineId")) {
            switch member {
            case "Ping":
                if expect("") { sendReply(reply, .success([]), outTypes: []) }
            case "GetMachineId":
                if expect("") { sendReply(reply, .success([.string(localMachineID())]), outTypes: [.string]) }
            default:
                fail(.unknownMethod("Unknown method \(member) on \(StandardInterface.peer)"))
            }
            return
        }

        guard let object = core.exports.withLock({ $0[path] }) else {
            // A path above exported objects still introspects, so tools can walk the tree.
            if (interface == nil || interface == StandardInterface.introspectable) && member == "Introspect" {
                let children = childNames(of: path)
                if !children.isEmpty || path == .root {
                    if expect("") { sendReply(reply, .success([.string(Introspection.xml(for: nil, children: children))]), outTypes: [.string]) }
                    return
                }
            }
            fail(.unknownObject("No object at path \(path)"))
            return
        }

        // Resolve the interface when the caller named none: ours first, then the standard ones.
        let resolved: String
        if let interface {
            resolved = interface
        } else if let found = object.interfaces.first(where: { object.tables[$0.name]?.methods[member] != nil }) {
            resolved = found.name
        } else if member == "Introspect" {
            resolved = StandardInterface.introspectable
        } else if ["Get", "GetAll", "Set"].contains(member) {
            resolved = StandardInterface.properties
        } else if member == "GetManagedObjects" && object.isObjectManager {
            resolved = StandardInterface.objectManager
        } else {
            fail(.unknownMethod("No method \(member) on \(path)"))
            return
        }

        switch resolved {
        case StandardInterface.introspectable:
            guard member == "Introspect" else { return fail(.unknownMethod("Unknown method \(member) on \(resolved)")) }
            if expect("") {
                sendReply(reply, .success([.string(Introspection.xml(for: object, children: childNames(of: path)))]), outTypes: [.string])
            }
        case StandardInterface.properties:
            handleProperties(message, object: object, member: member, signature: signature, sender: sender, reply: reply)
        case StandardInterface.objectManager where object.isObjectManager:
            guard member == "GetManagedObjects" else { return fail(.unknownMethod("Unknown method \(member) on \(resolved)")) }
            if expect("") { sendManagedObjects(reply, under: object.path) }
        default:
            guard let table = object.tables[resolved] else {
                return fail(.unknownInterface("No interface \(resolved) at \(path)"))
            }
            guard let method = table.methods[member] else {
                return fail(.unknownMethod("No method \(member) in \(resolved) at \(path)"))
            }
            if let authorize = method.authorize {
                return dispatchAuthorized(message, method: method, authorize: authorize, object: object,
                                          interface: resolved, signature: signature, sender: sender, reply: reply)
            }
            guard expect(method.inSignature) else { return }
            let arguments: [DBusValue]
            do { arguments = try Marshal.read(message) } catch {
                return fail(.invalidArgs("Cannot read the arguments: \(error)"))
            }
            // Without the handle the connection is going; received descriptors close with the values.
            guard let connection = handle else { return }
            let call = MethodCall(sender: sender ?? "", path: path, interface: resolved, member: member,
                                  arguments: arguments, connection: connection, object: object)
            runHandler(reply: reply, outTypes: method.outArgs.map(\.type)) { try await method.handler(call) }
        }
    }

    /// A method with an `authorize` hook: the hook runs before the signature check, so these
    /// checks go with it into the handler's task. The arguments are read here, while the
    /// message is alive.
    private func dispatchAuthorized(_ message: OpaquePointer, method: DBusMethod,
                                    authorize: @escaping @Sendable (MethodCall) async throws -> Void,
                                    object: ExportedObject, interface: String, signature: String, sender: String?,
                                    reply: ReplyAddress) {
        var refusal: DBusError?
        if signature != method.inSignature {
            refusal = .invalidArgs("Invalid arguments for \(interface).\(method.name): expected '\(method.inSignature)', got '\(signature)'")
        }
        let arguments: [DBusValue]
        do { arguments = try Marshal.read(message) } catch {
            arguments = []
            refusal = refusal ?? .invalidArgs("Cannot read the arguments: \(error)")
        }
        guard let connection = handle else { return }
        let call = MethodCall(sender: sender ?? "", path: object.path, interface: interface, member: method.name,
                              arguments: arguments, connection: connection, object: object)
        runHandler(reply: reply, outTypes: method.outArgs.map(\.type)) { [refusal] in
            try await authorize(call)
            if let refusal { throw refusal }
            return try await method.handler(call)
        }
    }

    /// Runs `body` as a task and answers with its outcome. The task starts at once on this thread
    /// (`Task.immediate`): a handler that does not suspend answers with no thread hop.
    ///
    /// The task has no executor preference. With one (this connection's thread, as it had), the
    /// runtime treats every hop of the task inside an actor whose custom executor runs jobs with
    /// `runSynchronously(on:)` (the daemon's event loop) as a switch of task executor: each `await`,
    /// even of a synchronous-bodied call or `withCheckedContinuation` on the same actor, became a
    /// suspension. A supervisor that checked its state and then registered a continuation lost the
    /// wake-up in between, and with it the reply (issue 9; DaemonStopTests.concurrentRequestsAllGetTheirReply).
    private func runHandler(reply: ReplyAddress, outTypes: [DBusType],
                            _ body: @escaping @Sendable () async throws -> [DBusValue]) {
        let core = self.core!
        Task.immediate {
            let result: Result<[DBusValue], any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            core.submit { state in state.sendReply(reply, result, outTypes: outTypes) }
        }
    }

    private func handleProperties(_ message: OpaquePointer, object: ExportedObject, member: String,
                                  signature: String, sender: String?, reply: ReplyAddress) {
        func fail(_ error: DBusError) { sendReply(reply, .failure(error), outTypes: []) }
        let wanted = ["Get": "ss", "GetAll": "s", "Set": "ssv"]
        guard let expected = wanted[member] else {
            return fail(.unknownMethod("Unknown method \(member) on \(StandardInterface.properties)"))
        }
        guard signature == expected else {
            return fail(.invalidArgs("Invalid arguments for \(StandardInterface.properties).\(member): expected '\(expected)', got '\(signature)'"))
        }
        let args: [DBusValue]
        do { args = try Marshal.read(message) } catch { return fail(.invalidArgs("Cannot read the arguments: \(error)")) }
        guard let interfaceName = args.first?.stringValue else { return fail(.invalidArgs("No interface name")) }

        if member == "GetAll" {
            if interfaceName.isEmpty || StandardInterface.all.contains(interfaceName) && object.tables[interfaceName] == nil {
                // Standard interfaces have no properties; "" means all of ours.
                let all = interfaceName.isEmpty ? object.interfaces.flatMap { i in object.properties(i.name).map { ($0.key, $0.value) } } : []
                sendReply(reply, .success([.variantDictionary(Dictionary(all, uniquingKeysWith: { a, _ in a }))]), outTypes: [.dictionary(key: .string, value: .variant)])
                return
            }
            guard let table = object.tables[interfaceName] else {
                return fail(.unknownInterface("No interface \(interfaceName) at \(object.path)"))
            }
            let values = object.properties(interfaceName)
            let entries = table.interface.properties.compactMap { p -> DBusDictEntry? in
                values[p.name].map { DBusDictEntry(.string(p.name), .variant($0)) }
            }
            sendReply(reply, .success([.dictionary(key: .string, value: .variant, entries)]), outTypes: [.dictionary(key: .string, value: .variant)])
            return
        }

        guard let propertyName = args[1].stringValue else { return fail(.invalidArgs("No property name")) }
        let table: ExportedObject.Table
        if interfaceName.isEmpty {
            guard let t = object.interfaces.lazy.compactMap({ object.tables[$0.name] }).first(where: { $0.properties[propertyName] != nil }) else {
                return fail(.unknownProperty("No property \(propertyName) at \(object.path)"))
            }
            table = t
        } else {
            guard let t = object.tables[interfaceName] else {
                return fail(.unknownInterface("No interface \(interfaceName) at \(object.path)"))
            }
            table = t
        }
        let iface = table.interface.name
        guard let property = table.properties[propertyName] else {
            return fail(.unknownProperty("No property \(propertyName) in \(iface)"))
        }

        if member == "Get" {
            guard let value = object.property(iface, propertyName) else {
                return fail(.unknownProperty("No property \(propertyName) in \(iface)"))
            }
            sendReply(reply, .success([.variant(value)]), outTypes: [.variant])
            return
        }

        // Set
        if let authorize = table.interface.authorizeSet {
            // Authorization first, so it runs before the checks below: they go with it, async.
            guard let connection = handle else { return }
            let call = MethodCall(sender: sender ?? "", path: object.path, interface: StandardInterface.properties,
                                  member: "Set", arguments: args, connection: connection, object: object)
            runHandler(reply: reply, outTypes: []) {
                try await authorize(call)
                let newValue = try Self.checkedSetValue(args[2], for: property, in: iface)
                try await Self.store(newValue, for: property, in: iface, of: object, call: call)
                return []
            }
            return
        }
        let newValue: DBusValue
        do { newValue = try Self.checkedSetValue(args[2], for: property, in: iface) } catch {
            return fail(error)
        }
        guard property.set != nil else {
            object.storeFromBus(interface: iface, name: propertyName, value: newValue)
            sendReply(reply, .success([]), outTypes: [])
            return
        }
        guard let connection = handle else { return }
        let call = MethodCall(sender: sender ?? "", path: object.path, interface: StandardInterface.properties,
                              member: "Set", arguments: args, connection: connection, object: object)
        runHandler(reply: reply, outTypes: []) {
            try await Self.store(newValue, for: property, in: iface, of: object, call: call)
            return []
        }
    }

    /// The value a Set may store: the property must be writable and the variant of its type.
    private static func checkedSetValue(_ argument: DBusValue, for property: DBusProperty, in iface: String) throws(DBusError) -> DBusValue {
        guard property.access == .readwrite else {
            throw .propertyReadOnly("Property \(iface).\(property.name) is read-only")
        }
        guard case .variant(let newValue) = argument, newValue.conforms(to: property.type) else {
            let got = argument.variantValue?.type.signature ?? "?"
            throw .invalidArgs("Property \(iface).\(property.name) is a '\(property.type)', not a '\(got)'")
        }
        return newValue
    }

    /// Runs the property's setter (which may refuse or adjust the value), then stores and announces
    /// the value before the reply goes out.
    private static func store(_ newValue: DBusValue, for property: DBusProperty, in iface: String,
                              of object: ExportedObject, call: MethodCall) async throws {
        let stored = try await property.set?(newValue, call) ?? newValue
        guard stored.conforms(to: property.type) else {
            throw DBusError.failed("the setter of \(iface).\(property.name) returned a '\(stored.type)', not a '\(property.type)'")
        }
        object.storeFromBus(interface: iface, name: property.name, value: stored)
    }

    /// Sends a method return or an error reply; the outcome of a handler is checked first.
    func sendReply(_ reply: ReplyAddress, _ result: Result<[DBusValue], any Error>, outTypes: [DBusType]) {
        guard !reply.noReply, connection != nil else { return }
        var outcome = result
        if case .success(let values) = result {
            if !ValueValidation.check(values, against: outTypes) {
                outcome = .failure(DBusError.failed("the handler returned '\(values.signature)', not '\(outTypes.map(\.signature).joined())'"))
            } else {
                do { try ValueValidation.validateBody(values) } catch { outcome = .failure(DBusError.failed("\(error)")) }
            }
        }
        switch outcome {
        case .success(let values):
            guard let m = dbus_message_new(DBUS_MESSAGE_TYPE_METHOD_RETURN) else { return }
            address(m, reply)
            do { try fill(m, with: values) } catch {
                dbus_message_unref(m)
                sendReply(reply, .failure(DBusError.failed("\(error)")), outTypes: [])
                return
            }
            _ = sendAndRelease(m)
        case .failure(let error):
            var dbusError = (error as? DBusError) ?? DBusError.failed(String(describing: error))
            if !NameRules.isValidInterfaceName(dbusError.name) {
                dbusError = .failed("invalid error name '\(dbusError.name)': \(dbusError.message)")
            }
            guard let m = dbus_message_new(DBUS_MESSAGE_TYPE_ERROR) else { return }
            address(m, reply)
            dbus_message_set_error_name(m, dbusError.name)
            let text = String(decoding: dbusError.message.utf8.filter { $0 != 0 }, as: UTF8.self)
            try? Marshal.append([.string(text)], to: m)
            _ = sendAndRelease(m)
        }
    }

    private func address(_ m: OpaquePointer, _ reply: ReplyAddress) {
        dbus_message_set_no_reply(m, 1)
        dbus_message_set_reply_serial(m, reply.serial)
        if let d = reply.destination { dbus_message_set_destination(m, d) }
    }

    /// Direct children (next path element) of `path` among exported objects.
    func childNames(of path: ObjectPath) -> [String] {
        let paths = core.exports.withLock { Array($0.keys) }
        let prefix = path.rawValue == "/" ? "/" : path.rawValue + "/"
        var names = Set<String>()
        for p in paths where p.rawValue.hasPrefix(prefix) && p != path {
            if let first = p.rawValue.dropFirst(prefix.count).split(separator: "/").first { names.insert(String(first)) }
        }
        return names.sorted()
    }

    /// Every object exported below `root`, in path order.
    private func managedObjectList(under root: ObjectPath) -> [ExportedObject] {
        core.exports.withLock { $0.values.filter { $0.path.isDescendant(of: root) } }.sorted { $0.path < $1.path }
    }

    /// GetManagedObjects, as values (the path for objects whose properties hold unix fds).
    func managedObjects(under root: ObjectPath) -> DBusValue {
        let entries = managedObjectList(under: root).map {
            DBusDictEntry(.objectPath($0.path), $0.interfacesAndProperties())
        }
        return .dictionary(key: .objectPath, value: ManagedObjects.interfacesType, entries)
    }

    /// Answers GetManagedObjects with a body written straight into wire format: with thousands
    /// of objects, building the reply as values through libdbus' iterators took ~44 us per
    /// object (docs/benchmarks.md, "Bus reads"). The same content either way.
    ///
    /// While nothing changed (no value, no export or unexport), the last reply is sent again,
    /// readdressed: with thousands of objects, libdbus' validation of the body is most of the
    /// cost of building one.
    func sendManagedObjects(_ reply: ReplyAddress, under root: ObjectPath) {
        guard !reply.noReply, connection != nil else { return }
        let changes = ExportedObject.changes.load(ordering: .sequentiallyConsistent)
        if let kept = managedReplies[root], kept.changes == changes, let message = readdressed(kept.message, reply) {
            _ = sendAndRelease(message)
            return
        }
        let objects = managedObjectList(under: root)
        var body = WireWriter(capacity: 512 * objects.count + 8)
        let array = body.beginArray(elementAlignment: 8)
        var written = true
        for object in objects where !object.writeManagedEntry(to: &body) {
            written = false
            break
        }
        body.endArray(array)
        if written, let built = methodReturn(reply, emptyValue: .dictionary(key: .objectPath, value: ManagedObjects.interfacesType, []),
                                             body: body.bytes), let message = readdressed(built, reply) {
            if let old = managedReplies.updateValue((changes, built), forKey: root) { dbus_message_unref(old.message) }
            _ = sendAndRelease(message)
            return
        }
        sendReply(reply, .success([managedObjects(under: root)]), outTypes: [ManagedObjects.type])
    }

    /// A copy of `template` (a method return) answering `reply`: serial 0 for the connection to
    /// number, `reply`'s reply serial and destination. The caller owns it.
    private func readdressed(_ template: OpaquePointer, _ reply: ReplyAddress) -> OpaquePointer? {
        guard let m = dbus_message_copy(template) else { return nil }
        guard dbus_message_set_reply_serial(m, reply.serial) != 0, dbus_message_set_destination(m, reply.destination) != 0 else {
            dbus_message_unref(m)
            return nil
        }
        return m
    }

    /// A method return whose body is `body`, one value already in wire format (little-endian),
    /// addressed to `reply` (`readdressed` answers another call with it). libdbus writes the
    /// header (for `emptyValue`, of the same type), `body` replaces the empty one, and libdbus
    /// reads the whole back, validating it as it validates every message it receives. Nil when
    /// it refuses: the caller then builds the reply itself. The caller owns the result.
    private func methodReturn(_ reply: ReplyAddress, emptyValue: DBusValue, body: [UInt8]) -> OpaquePointer? {
        guard let template = dbus_message_new(DBUS_MESSAGE_TYPE_METHOD_RETURN) else { return nil }
        defer { dbus_message_unref(template) }
        address(template, reply)
        guard (try? Marshal.append([emptyValue], to: template)) != nil else { return nil }
        // dbus_message_demarshal refuses serial 0; dbus_message_copy resets it to 0 below, so
        // the connection numbers the reply as it numbers every other message.
        dbus_message_set_serial(template, 1)
        var raw: UnsafeMutablePointer<CChar>? = nil
        var rawLength: Int32 = 0
        guard dbus_message_marshal(template, &raw, &rawLength) != 0, let raw else { return nil }
        defer { dbus_free(raw) }
        let marshalled = UnsafeRawBufferPointer(start: raw, count: Int(rawLength))
        // The fixed header: byte order, type, flags, version, body length (offset 4), serial.
        guard marshalled.count >= 16, marshalled[0] == UInt8(ascii: "l") else { return nil }
        let emptyBody = Int(UInt32(littleEndian: marshalled.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        let headerLength = marshalled.count - emptyBody
        guard headerLength >= 16, headerLength % 8 == 0, body.count < Int(Int32.max) - headerLength else { return nil }
        var whole: [UInt8] = []
        whole.reserveCapacity(headerLength + body.count)
        whole.append(contentsOf: marshalled.prefix(headerLength))
        withUnsafeBytes(of: UInt32(body.count).littleEndian) { length in
            for i in 0..<4 { whole[4 + i] = length[i] }
        }
        whole.append(contentsOf: body)
        return whole.withUnsafeBytes(WireFormat.demarshal)
    }

    func localMachineID() -> String {
        if let machineID { return machineID }
        var error = CDBus.DBusError()
        dbus_error_init(&error)
        defer { dbus_error_free(&error) }
        guard let raw = dbus_try_get_local_machine_id(&error) else { return "" }
        defer { dbus_free(raw) }
        let id = String(cString: raw)
        machineID = id
        return id
    }
}

enum ManagedObjects {
    /// `a{sa{sv}}`
    static let interfacesType = DBusType.dictionary(key: .string, value: .dictionary(key: .string, value: .variant))
    /// `a{oa{sa{sv}}}`
    static let type = DBusType.dictionary(key: .objectPath, value: interfacesType)
}
