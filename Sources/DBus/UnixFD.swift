import Glibc
import Synchronization

/// A Unix file descriptor carried by a D-Bus value (`h`), owned by this object: it is closed
/// when the last reference goes away, unless `take()` has handed it over.
///
/// A received descriptor is libdbus' duplicate, owned by the receiver's `UnixFD`; a sent one is
/// duplicated into the message, so sending does not consume it. Every copy of a `DBusValue`
/// shares the same object: the descriptor stays open while any of them lives, and is closed
/// exactly once (by `close()`, or when the last reference goes), never again after `take()`.
public final class UnixFD: Sendable, Hashable, CustomStringConvertible {
    /// -1 once closed or taken. Behind a lock, so that a close cannot run while the descriptor
    /// is being duplicated into a message (its number could be reused in between).
    private let descriptor: Mutex<Int32>

    /// Takes ownership of `fd` (a negative number makes a closed `UnixFD`).
    public init(taking fd: Int32) {
        descriptor = Mutex(fd >= 0 ? fd : -1)
    }

    /// A new descriptor for the file `fd` refers to (close-on-exec); the caller keeps `fd`.
    public convenience init(duplicating fd: Int32) throws(DBusConnectionError) {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else {
            throw DBusConnectionError(.invalidArgument, "cannot duplicate file descriptor \(fd): \(String(cString: strerror(errno)))")
        }
        self.init(taking: copy)
    }

    deinit { close() }

    /// The descriptor number while this object owns it, nil once closed or taken. Use the number
    /// only while this object is alive and open (`withDescriptor` holds it open for a block).
    public var rawValue: Int32? {
        let fd = descriptor.withLock { $0 }
        return fd >= 0 ? fd : nil
    }

    /// True until closed or taken.
    public var isOpen: Bool { rawValue != nil }

    /// Runs `body` with the descriptor, which cannot be closed meanwhile; nil when it is closed
    /// or taken. Keep `body` short: `close()` and `take()` wait for it.
    public func withDescriptor<R, E: Error>(_ body: (Int32) throws(E) -> R) throws(E) -> R? {
        try descriptor.withLock { (fd: inout Int32) throws(E) -> R? in
            fd >= 0 ? try body(fd) : nil
        }
    }

    /// Hands the descriptor over: the caller owns it (and closes it), this object forgets it.
    /// nil when it was already closed or taken.
    public func take() -> Int32? {
        let fd = descriptor.withLock { fd -> Int32 in
            defer { fd = -1 }
            return fd
        }
        return fd >= 0 ? fd : nil
    }

    /// Closes the descriptor now (once: later calls, `take()` and the deinit do nothing).
    public func close() {
        if let fd = take() { _ = Glibc.close(fd) }
    }

    /// Identity: two `UnixFD`s are equal when they are the same object (the same ownership), not
    /// when their numbers or files agree.
    public static func == (lhs: UnixFD, rhs: UnixFD) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }

    public var description: String { rawValue.map { "\($0)" } ?? "closed" }
}
