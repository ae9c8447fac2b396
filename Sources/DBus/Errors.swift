/// A D-Bus error reply: the error name and its message (the first string argument).
///
/// Calls throw it when the peer answers with an error; method handlers throw it to answer with
/// an error. A handler that throws any other error answers `org.freedesktop.DBus.Error.Failed`.
public struct DBusError: Error, Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public var message: String

    public init(_ name: String, _ message: String = "") {
        self.name = name
        self.message = message
    }

    public var description: String { message.isEmpty ? name : "\(name): \(message)" }

    /// The standard error names of `org.freedesktop.DBus.Error`.
    public enum Name {
        public static let failed = "org.freedesktop.DBus.Error.Failed"
        public static let invalidArgs = "org.freedesktop.DBus.Error.InvalidArgs"
        public static let unknownMethod = "org.freedesktop.DBus.Error.UnknownMethod"
        public static let unknownObject = "org.freedesktop.DBus.Error.UnknownObject"
        public static let unknownInterface = "org.freedesktop.DBus.Error.UnknownInterface"
        public static let unknownProperty = "org.freedesktop.DBus.Error.UnknownProperty"
        public static let propertyReadOnly = "org.freedesktop.DBus.Error.PropertyReadOnly"
        public static let accessDenied = "org.freedesktop.DBus.Error.AccessDenied"
        public static let notSupported = "org.freedesktop.DBus.Error.NotSupported"
        public static let noReply = "org.freedesktop.DBus.Error.NoReply"
        public static let serviceUnknown = "org.freedesktop.DBus.Error.ServiceUnknown"
        public static let nameHasNoOwner = "org.freedesktop.DBus.Error.NameHasNoOwner"
        public static let timeout = "org.freedesktop.DBus.Error.Timeout"
        public static let noMemory = "org.freedesktop.DBus.Error.NoMemory"
        public static let matchRuleInvalid = "org.freedesktop.DBus.Error.MatchRuleInvalid"
    }

    public static func failed(_ message: String) -> DBusError { DBusError(Name.failed, message) }
    public static func invalidArgs(_ message: String) -> DBusError { DBusError(Name.invalidArgs, message) }
    public static func accessDenied(_ message: String) -> DBusError { DBusError(Name.accessDenied, message) }
    public static func unknownMethod(_ message: String) -> DBusError { DBusError(Name.unknownMethod, message) }
    public static func unknownObject(_ message: String) -> DBusError { DBusError(Name.unknownObject, message) }
    public static func unknownInterface(_ message: String) -> DBusError { DBusError(Name.unknownInterface, message) }
    public static func unknownProperty(_ message: String) -> DBusError { DBusError(Name.unknownProperty, message) }
    public static func propertyReadOnly(_ message: String) -> DBusError { DBusError(Name.propertyReadOnly, message) }
    public static func notSupported(_ message: String) -> DBusError { DBusError(Name.notSupported, message) }
}

/// A local failure of the connection or of a request, as opposed to an error reply from a peer.
/// Codes can grow without breaking callers.
public struct DBusConnectionError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let name: String
        init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The connection is gone: the bus closed it, or the bus daemon died. Open a new one.
        public static let disconnected = Code("disconnected")
        /// The connection was closed by its owner (`close()`).
        public static let closed = Code("closed")
        /// No reply before the call's deadline.
        public static let timeout = Code("timeout")
        /// The address cannot be reached, authentication or `Hello` failed.
        public static let connectFailed = Code("connectFailed")
        /// A value, name, path or signature that D-Bus cannot carry (nothing was sent).
        public static let invalidArgument = Code("invalidArgument")
        /// A peer sent something we could not make sense of (e.g. a reply of an unexpected type).
        public static let invalidMessage = Code("invalidMessage")
        /// An object is already exported at this path on this connection.
        public static let objectPathInUse = Code("objectPathInUse")
        /// The connection cannot do this (e.g. it cannot pass unix file descriptors).
        public static let notSupported = Code("notSupported")
        /// libdbus ran out of memory.
        public static let noMemory = Code("noMemory")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
