import ArgumentParser
import DBus
import Glibc

/// The value of `--bus`: `system`, `session`, a D-Bus address (`unix:path=/run/x.sock`,
/// anything with a `:`), or the path of a bus socket (`/run/x.sock`).
public struct BusOption: ExpressibleByArgument, Sendable, Hashable, CustomStringConvertible {
    public let address: BusAddress
    public let description: String

    public init?(argument: String) {
        switch argument {
        case "system": address = .system
        case "session", "user": address = .session
        case _ where argument.hasPrefix("/"): address = .address("unix:path=\(argument)")
        case _ where argument.contains(":"): address = .address(argument)
        default: return nil
        }
        description = argument
    }

    public static let system = BusOption(argument: "system")!

    public static var defaultValueDescription: String { "system" }

    /// `option` when given, else the environment variable `variable` (e.g. `BGWORKER_BUS`),
    /// else the system bus. A bad value in the variable is an error that names it.
    public static func resolve(_ option: BusOption?, environment variable: String) throws -> BusOption {
        if let option { return option }
        guard let raw = getenv(variable).map({ String(cString: $0) }), !raw.isEmpty else { return .system }
        guard let parsed = BusOption(argument: raw) else {
            throw ValidationError("\(variable)=\(raw): expected system, session, a D-Bus address or a socket path")
        }
        return parsed
    }
}
