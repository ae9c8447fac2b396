import Foundation

/// A D-Bus value as `busctl --json` prints it: integers, doubles, booleans, strings; arrays and
/// structs as JSON arrays; dictionaries as objects; variants as `{"type": SIG, "data": VALUE}`.
public indirect enum BusValue: Sendable, Equatable, Decodable, CustomStringConvertible {
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([BusValue])
    case object([String: BusValue])
    case null

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let v = try? c.decode(Bool.self) { self = .bool(v) }
        else if let v = try? c.decode(Int64.self) { self = .int(v) }
        else if let v = try? c.decode(UInt64.self) { self = .uint(v) }
        else if let v = try? c.decode(Double.self) { self = .double(v) }
        else if let v = try? c.decode(String.self) { self = .string(v) }
        else if let v = try? c.decode([BusValue].self) { self = .array(v) }
        else { self = .object(try c.decode([String: BusValue].self)) }
    }

    /// The value as an unsigned 32-bit integer (`u`), if it is one.
    public var uint32: UInt32? {
        switch self {
        case .int(let v): UInt32(exactly: v)
        case .uint(let v): UInt32(exactly: v)
        default: nil
        }
    }
    public var uint64: UInt64? {
        switch self {
        case .int(let v): UInt64(exactly: v)
        case .uint(let v): v
        default: nil
        }
    }
    public var string: String? { if case .string(let v) = self { v } else { nil } }
    public var bool: Bool? { if case .bool(let v) = self { v } else { nil } }
    public var array: [BusValue]? { if case .array(let v) = self { v } else { nil } }
    /// The content of a variant (`{"type": .., "data": ..}`), or the value itself.
    public var unwrapped: BusValue {
        if case .object(let o) = self, o.count == 2, o["type"] != nil, let data = o["data"] { data } else { self }
    }

    public var description: String {
        switch self {
        case .bool(let v): "\(v)"
        case .int(let v): "\(v)"
        case .uint(let v): "\(v)"
        case .double(let v): "\(v)"
        case .string(let v): "\"\(v)\""
        case .array(let v): "[" + v.map(\.description).joined(separator: ", ") + "]"
        case .object(let o): "{" + o.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
        case .null: "null"
        }
    }
}

/// One message seen by a `BusMonitor`.
public struct BusMessage: Sendable, CustomStringConvertible {
    /// `signal`, `method_call`, `method_return` or `error`.
    public var type: String
    public var sender: String?
    public var destination: String?
    public var path: String?
    public var interface: String?
    public var member: String?
    public var errorName: String?
    /// The body's signature ("" for an empty body).
    public var signature: String
    /// The body's values, one per complete type of the signature.
    public var body: [BusValue]

    init?(json line: String) {
        guard line.hasPrefix("{"),
              let top = try? JSONDecoder().decode([String: BusValue].self, from: Data(line.utf8)),
              let type = top["type"]?.string
        else { return nil }
        self.type = type
        sender = top["sender"]?.string
        destination = top["destination"]?.string
        path = top["path"]?.string
        interface = top["interface"]?.string
        member = top["member"]?.string
        errorName = top["error_name"]?.string
        if case .object(let payload)? = top["payload"] {
            signature = payload["type"]?.string ?? ""
            body = payload["data"]?.array ?? []
        } else {
            signature = ""
            body = []
        }
    }

    public var description: String {
        "\(type) \(sender ?? "-") \(path ?? "-") \(interface ?? "-").\(member ?? "-") \(signature) \(body)"
    }
}

/// Watches a bus with a real client that no one here wrote: `busctl monitor --json=short`, one
/// JSON line per message, restricted to the given match rules (D-Bus match syntax, e.g.
/// `type='signal',interface='org.keepalived.Vrrp1.Instance'`). The initialiser returns once the
/// bus has made busctl a monitor (busctl says so on stderr), so nothing sent afterwards is missed.
///
/// One consumer reads messages in order with `next` or `waitFor`.
public final class BusMonitor: Sendable {
    public let process: ChildProcess
    public let address: String

    /// `address`: a D-Bus address such as `unix:path=/tmp/x/bus.sock`.
    public init(address: String, matches: [String] = [], startTimeout: Duration = .seconds(10)) async throws {
        self.address = address
        process = try ChildProcess(
            ["busctl", "--address=\(address)", "monitor", "--json=short"] + matches.map { "--match=\($0)" },
            extraEnvironment: ["SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_COLORS": "0"],
            captureStdout: true, captureStderr: true)
        do {
            while true {
                guard let line = try await process.readErrorLine(timeout: startTimeout) else {
                    throw TestProcessError("busctl monitor on \(address) exited before it became a monitor")
                }
                if line.contains("Monitoring bus message stream") { break }
            }
        } catch {
            await process.terminate(grace: .seconds(1))
            throw error
        }
    }

    /// The next message, or nil when the monitor has ended (its bus went away or `stop`).
    public func next(timeout: Duration = .seconds(10)) async throws -> BusMessage? {
        while let line = try await process.readLine(timeout: timeout) {
            if let message = BusMessage(json: line) { return message }
        }
        return nil
    }

    /// Reads messages until one satisfies `predicate`; returns it. Earlier ones are consumed.
    public func waitFor(
        _ what: String, timeout: Duration = .seconds(10), where predicate: (BusMessage) -> Bool
    ) async throws -> BusMessage {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TestProcessError("timed out after \(timeout) waiting for \(what)") }
            guard let message = try await next(timeout: left) else {
                throw TestProcessError("the monitor on \(address) ended before \(what)")
            }
            if predicate(message) { return message }
        }
    }

    /// Stops the monitor and reaps it.
    public func stop() async { await process.terminate(grace: .seconds(2)) }
}
