// STUB for the lead's build: replaced by the `notify` branch's parser at merge.
public struct NotifyMessage: Sendable, Equatable {
    public var ready = false
    public var reloading = false
    public var stopping = false
    public var status: String? = nil
    public var watchdogPing = false
    public var watchdogTrigger = false
    public var watchdogUsec: UInt64? = nil
    public var extendTimeoutUsec: UInt64? = nil
    public var barrier = false
    public var mainPid: Int32? = nil
    public init() {}
    public static let maximumSize = 4096
    public init(parsing bytes: some Collection<UInt8>) throws(NotifyMessageError) {
        guard bytes.count <= Self.maximumSize else { throw .tooLarge(bytes.count) }
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let text = String(decoding: line, as: UTF8.self)
            guard let eq = text.firstIndex(of: "=") else { continue }
            let key = text[..<eq], value = String(text[text.index(after: eq)...])
            switch key {
            case "READY": ready = value == "1"
            case "RELOADING": reloading = value == "1"
            case "STOPPING": stopping = value == "1"
            case "STATUS": status = value
            case "WATCHDOG": if value == "1" { watchdogPing = true } else if value == "trigger" { watchdogTrigger = true }
            case "WATCHDOG_USEC": watchdogUsec = UInt64(value)
            case "EXTEND_TIMEOUT_USEC": extendTimeoutUsec = UInt64(value)
            case "BARRIER": barrier = value == "1"
            default: continue
            }
        }
    }
}
public enum NotifyMessageError: Error, Sendable, Equatable, CustomStringConvertible {
    case tooLarge(Int)
    public var description: String { "too large" }
}
