// Arrival times of signals, taken on a thread of their own that waits on the bus socket.
//
// Why not the DBus module: its signals reach a task through an AsyncStream, so the time a task
// sees a signal includes a hop to Swift's cooperative pool, which on a busy machine came later
// than the daemon's whole reaction to the same signal (negative figures). Here one dedicated
// thread sleeps in poll() on the socket of a private libdbus connection and stamps
// CLOCK_MONOTONIC the moment the socket becomes readable, before anything is parsed: that is
// when dbus-daemon delivered the message, to us and (in the same pass) to every other receiver.
// The connection is opened, used and closed on that thread only.
import CDBus
import DBus
import Foundation
import Glibc
import SystemSupport
import Synchronization

final class StampedSignals: Sendable {
    private let stop = Mutex(false)
    /// The eventfd that wakes the thread for `cancel`; -1 once the thread closed it. Written and
    /// closed under the lock: a late `cancel` must not write into a reused descriptor number
    /// (another thread's eventfd, which it would stop).
    private let wake: Mutex<Int32>
    private let wakeFD: Int32

    private init(wakeFD: Int32) {
        self.wakeFD = wakeFD
        wake = Mutex(wakeFD)
    }

    /// Connects to `address`, adds `rules`, and calls `deliver` on the thread for every signal
    /// with its arrival time. Returns once the bus has the rules.
    /// `ended` is called on the thread when it stops (cancelled, or the bus went away).
    static func start(address: String, rules: [MatchRule],
                      deliver: @escaping @Sendable (DBusSignal, UInt64) -> Void,
                      ended: @escaping @Sendable () -> Void) async throws -> StampedSignals {
        let wake = eventfd(0, Int32(EFD_CLOEXEC))
        guard wake >= 0 else { throw BenchError("eventfd: \(errno)") }
        let stamped = StampedSignals(wakeFD: wake)
        let ruleTexts = rules.map(\.description)
        try await withCheckedThrowingContinuation { (ready: CheckedContinuation<Void, any Error>) in
            let thread = Thread {
                if stamped.run(address: address, rules: ruleTexts, ready: ready, deliver: deliver) { ended() }
            }
            thread.name = "bench-stamps"
            thread.start()
        }
        return stamped
    }

    /// Ends the thread (and closes its connection there).
    func cancel() {
        stop.withLock { $0 = true }
        wake.withLock { fd in
            guard fd >= 0 else { return }
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }
    }

    /// Returns whether it got ready (and so whether it ran until cancelled or disconnected).
    private func run(address: String, rules: [String], ready: CheckedContinuation<Void, any Error>,
                     deliver: @Sendable (DBusSignal, UInt64) -> Void) -> Bool {
        defer {
            wake.withLock { fd in
                if fd >= 0 { close(fd) }
                fd = -1
            }
        }
        var error = CDBus.DBusError()
        dbus_error_init(&error)
        defer { dbus_error_free(&error) }
        func failure(_ what: String) -> BenchError {
            BenchError("\(what): \(error.message.map { String(cString: $0) } ?? "unknown error")")
        }
        guard let connection = dbus_connection_open_private(address, &error) else {
            ready.resume(throwing: failure("connect to \(address)"))
            return false
        }
        defer {
            dbus_connection_close(connection)
            dbus_connection_unref(connection)
        }
        dbus_connection_set_exit_on_disconnect(connection, 0)
        guard dbus_bus_register(connection, &error) != 0 else {
            ready.resume(throwing: failure("Hello"))
            return false
        }
        for rule in rules {
            dbus_bus_add_match(connection, rule, &error)
            if dbus_error_is_set(&error) != 0 {
                ready.resume(throwing: failure("AddMatch \(rule)"))
                return false
            }
        }
        var fd: Int32 = -1
        guard dbus_connection_get_unix_fd(connection, &fd) != 0 else {
            ready.resume(throwing: BenchError("no socket for \(address)"))
            return false
        }
        // Real-time priority where allowed (root): the thread sleeps in poll and does
        // microseconds of work per message, and a busy moment (a failover: keepalived, two
        // daemons, a spawn) must not delay its stamp by a scheduler slice. Seen without it:
        // stamps 5-6 ms late, i.e. "negative" latencies.
        var param = sched_param(sched_priority: 10)
        _ = pthread_setschedparam(pthread_self(), SCHED_FIFO, &param)
        ready.resume()

        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        while !stop.withLock({ $0 }) {
            // Messages libdbus already read in an earlier pass come first.
            let at = monotonicNanoseconds()
            while let message = dbus_connection_pop_message(connection) {
                if let signal = Self.signal(from: message) { deliver(signal, at) }
                dbus_message_unref(message)
            }
            fds[0].revents = 0
            fds[1].revents = 0
            let rc = poll(&fds, 2, -1)
            if rc < 0 && errno == EINTR { continue }
            if rc < 0 || fds[1].revents != 0 { return true }
            let readable = monotonicNanoseconds()
            guard dbus_connection_read_write(connection, 0) != 0 else { return true }  // disconnected
            while let message = dbus_connection_pop_message(connection) {
                if let signal = Self.signal(from: message) { deliver(signal, readable) }
                dbus_message_unref(message)
            }
        }
        return true
    }

    // MARK: - Reading a message's arguments (only what the benchmark's signals carry)

    private static func signal(from message: OpaquePointer) -> DBusSignal? {
        guard dbus_message_get_type(message) == DBUS_MESSAGE_TYPE_SIGNAL,
              let path = dbus_message_get_path(message).flatMap({ try? ObjectPath(String(cString: $0)) }),
              let interface = dbus_message_get_interface(message), let member = dbus_message_get_member(message)
        else { return nil }
        var arguments: [DBusValue] = []
        var iter = DBusMessageIter()
        if dbus_message_iter_init(message, &iter) != 0 {
            repeat {
                guard let value = value(&iter) else { break }
                arguments.append(value)
            } while dbus_message_iter_next(&iter) != 0
        }
        let sender = dbus_message_get_sender(message).map { String(cString: $0) } ?? ""
        return DBusSignal(sender: sender, path: path, interface: String(cString: interface),
                          member: String(cString: member), arguments: arguments)
    }

    private static func value(_ iter: inout DBusMessageIter) -> DBusValue? {
        let type = dbus_message_iter_get_arg_type(&iter)
        switch UInt8(truncatingIfNeeded: type) {
        case UInt8(ascii: "s"), UInt8(ascii: "o"), UInt8(ascii: "g"):
            var p: UnsafePointer<CChar>?
            dbus_message_iter_get_basic(&iter, &p)
            return .string(p.map { String(cString: $0) } ?? "")
        case UInt8(ascii: "u"):
            var v: UInt32 = 0
            dbus_message_iter_get_basic(&iter, &v)
            return .uint32(v)
        case UInt8(ascii: "i"):
            var v: Int32 = 0
            dbus_message_iter_get_basic(&iter, &v)
            return .int32(v)
        case UInt8(ascii: "t"):
            var v: UInt64 = 0
            dbus_message_iter_get_basic(&iter, &v)
            return .uint64(v)
        case UInt8(ascii: "x"):
            var v: Int64 = 0
            dbus_message_iter_get_basic(&iter, &v)
            return .int64(v)
        case UInt8(ascii: "b"):
            var v: UInt32 = 0
            dbus_message_iter_get_basic(&iter, &v)
            return .bool(v != 0)
        case UInt8(ascii: "y"):
            var v: UInt8 = 0
            dbus_message_iter_get_basic(&iter, &v)
            return .byte(v)
        case UInt8(ascii: "v"):
            var inner = DBusMessageIter()
            dbus_message_iter_recurse(&iter, &inner)
            return value(&inner).map { .variant($0) }
        case UInt8(ascii: "a"):
            guard let signature = dbus_message_iter_get_signature(&iter) else { return nil }
            defer { dbus_free(signature) }
            guard let arrayType = try? DBusType(String(cString: signature)) else { return nil }
            var inner = DBusMessageIter()
            dbus_message_iter_recurse(&iter, &inner)
            var elements: [DBusValue] = []
            while dbus_message_iter_get_arg_type(&inner) != 0 {
                guard let element = value(&inner) else { return nil }
                elements.append(element)
                dbus_message_iter_next(&inner)
            }
            switch arrayType {
            case .dictionary(let key, let valueType):
                let entries = elements.compactMap { e -> DBusDictEntry? in
                    guard case .structure(let kv) = e, kv.count == 2 else { return nil }
                    return DBusDictEntry(kv[0], kv[1])
                }
                return .dictionary(key: key, value: valueType, entries)
            case .array(let element):
                return .array(element, elements)
            default:
                return nil
            }
        case UInt8(ascii: "r"), UInt8(ascii: "("), UInt8(ascii: "e"), UInt8(ascii: "{"):
            var inner = DBusMessageIter()
            dbus_message_iter_recurse(&iter, &inner)
            var fields: [DBusValue] = []
            while dbus_message_iter_get_arg_type(&inner) != 0 {
                guard let field = value(&inner) else { return nil }
                fields.append(field)
                dbus_message_iter_next(&inner)
            }
            return .structure(fields)
        default:
            return nil
        }
    }
}
