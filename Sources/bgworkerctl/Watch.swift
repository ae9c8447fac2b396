import ArgumentParser
import ClientSupport
import DBus

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the daemon's signals as they come, one line each, until interrupted.",
        discussion: """
            WorkerStateChanged, HARoleChanged and the PropertiesChanged of the daemon's objects \
            (among them a notify worker's readiness: ReadyAt, StatusText), from the current owner of org.example.BgWorker only; and the owner itself (first line: \
            the owner now), so a daemon restart shows. Ends with status 1 when the bus connection ends.
            """)

    @OptionGroup var options: GlobalOptions

    static let workerPrefix = Service.managerPath.rawValue + "/worker/"

    func run() async throws {
        try await Session.run(options) { session in
            let watch = try await session.client.connection.watchNameOwner(Service.name, signals: [
                MatchRule(path: Service.managerPath, interface: Service.managerInterface),
                MatchRule(pathNamespace: Service.managerPath, interface: Service.properties, member: "PropertiesChanged"),
            ])
            let printer = EventPrinter(json: session.json)
            printer.owner(watch.initialOwner)
            for await event in watch {
                switch event {
                case .ownerChanged(_, let owner): printer.owner(owner)
                case .signal(let signal): printer.signal(signal)
                case .ignoredSignal, .ownerReply: break
                }
            }
            throw DBusConnectionError(.disconnected, "the bus connection ended")
        }
    }
}

/// One line per event: text with a local timestamp, or a JSON object with an RFC 3339 UTC `time`.
struct EventPrinter {
    let json: Bool

    func owner(_ owner: String?) {
        emit(text: "owner \(owner ?? "none")", json: [("event", .string("NameOwner")), ("owner", owner.map(JSON.string) ?? .null)])
    }

    func signal(_ signal: DBusSignal) {
        let args = signal.arguments
        switch (signal.interface, signal.member) {
        case (Service.managerInterface, "WorkerStateChanged"):
            guard args.count == 4, let name = args[0].stringValue, let state = args[1].stringValue,
                  let pid = args[2].uint32Value, let reason = args[3].stringValue else { return unexpected(signal) }
            let pidText = pid == 0 ? "" : ", pid \(pid)"
            emit(text: "worker \(name): \(state)\(pidText) (\(reason))",
                 json: [("event", .string(signal.member)), ("name", .string(name)), ("state", .string(state)),
                        ("pid", .uint(UInt64(pid))), ("reason", .string(reason))])
        case (Service.managerInterface, "HARoleChanged"):
            guard args.count == 1, let role = args[0].stringValue else { return unexpected(signal) }
            emit(text: "ha-role \(role)", json: [("event", .string(signal.member)), ("role", .string(role))])
        case (Service.properties, "PropertiesChanged"):
            guard args.count == 3, let interface = args[0].stringValue, let changed = args[1].dictionaryEntries,
                  let invalidated = args[2].stringArrayValue else { return unexpected(signal) }
            let object = Self.objectName(signal.path)
            let pairs = changed.map { entry -> String in
                let key = entry.key.stringValue ?? "?"
                return "\(key)=\(Self.text(entry.value, of: key))"
            } + invalidated.map { "\($0) invalidated" }
            var members: [(String, JSON)] = [("event", .string(signal.member)), ("path", .string(signal.path.rawValue))]
            if let worker = object.worker { members.append(("worker", .string(worker))) }
            members += [("interface", .string(interface)), ("changed", JSON(args[1])),
                        ("invalidated", .array(invalidated.map(JSON.string)))]
            emit(text: "properties \(object.label): \(pairs.joined(separator: " "))", json: members)
        default:
            unexpected(signal)
        }
    }

    /// A signal of the service that this version does not know: shown raw rather than dropped.
    private func unexpected(_ signal: DBusSignal) {
        emit(text: "signal \(signal.path) \(signal.interface).\(signal.member) \(signal.arguments.map(\.description).joined(separator: " "))",
             json: [("event", .string(signal.member)), ("path", .string(signal.path.rawValue)),
                    ("interface", .string(signal.interface)), ("arguments", .array(signal.arguments.map(JSON.init)))])
    }

    private func emit(text: String, json members: [(String, JSON)]) {
        let now = Time.now()
        // Reasons and values hold what the configuration holds (a program's path): no control
        // character of theirs reaches the terminal.
        writeLine(json ? JSON.object([("time", .string(now.json))] + members).rendered : "\(now.text) \(Terminal.escaped(text))")
    }

    /// `manager`, or `worker NAME` (the label unescaped) for a worker object's path.
    static func objectName(_ path: ObjectPath) -> (label: String, worker: String?) {
        if path == Service.managerPath { return ("manager", nil) }
        guard path.rawValue.hasPrefix(Watch.workerPrefix) else { return (path.rawValue, nil) }
        let name = unescape(String(path.rawValue.dropFirst(Watch.workerPrefix.count)))
        return ("worker \(name)", name)
    }

    /// The inverse of the object-path escaping of worker names (`_2d` is `-`).
    static func unescape(_ label: String) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(label.utf8)[...]
        while let first = utf8.first {
            if first == UInt8(ascii: "_"), utf8.count >= 3,
               let byte = UInt8(String(decoding: utf8.dropFirst().prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(byte)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(first)
                utf8 = utf8.dropFirst()
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Properties that hold µs since the epoch (the contract's `t` times).
    static let timeProperties: Set<String> = ["StateChangedAt", "ReadyAt"]

    /// A property value for a text line: strings bare unless empty or with blanks (then quoted);
    /// times as local time with milliseconds (JSON keeps the number).
    static func text(_ value: DBusValue, of property: String = "") -> String {
        if timeProperties.contains(property), let micros = value.unwrappingVariant.uint64Value {
            return JSON.string(Time.localMillis(microseconds: micros)).rendered
        }
        switch value.unwrappingVariant {
        case .string(let s):
            return s.isEmpty || s.contains(where: { $0.isWhitespace || $0 == "\"" }) ? JSON.string(s).rendered : s
        default:
            return JSON(value).rendered
        }
    }
}
