import Foundation
import Glibc

/// The receiving end of the `sd_notify` protocol (what systemd listens on for `Type=notify`
/// services and what a container manager gives its systemd): a datagram socket whose address goes
/// into `NOTIFY_SOCKET` of the child. Each datagram is one message of `KEY=VALUE` lines
/// (`READY=1`, `STATUS=...`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`, ...). File descriptors
/// passed along (a `BARRIER=1` pipe) are closed by the kernel as their message is received, which
/// is what a sender waiting on a barrier waits for; the message must be received, though.
///
/// By default the socket is in the abstract namespace (`@bgw-notify-...`), so that it is reachable
/// from a child in another mount namespace (a systemd in a namespace with a private /tmp). Abstract
/// sockets are shared by everything in the same network namespace.
public final class NotifySocket: Sendable {
    /// The value for `NOTIFY_SOCKET`.
    public let address: String
    private let fd: Int32

    /// `path`: a filesystem path for the socket, or nil for a fresh abstract name.
    public init(path: String? = nil) throws {
        let name = path ?? "@bgw-notify-\(uniqueID(12))"
        address = name
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestProcessError("socket(AF_UNIX, SOCK_DGRAM): \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // abstract: leading NUL, no terminator
        else { unlink(name) }
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else {
            close(fd)
            throw TestProcessError("notify socket name too long: \(name)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes.first == 0 ? 0 : 1))
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw TestProcessError("bind \(name): \(String(cString: strerror(e)))")
        }
        if path != nil { chmod(name, 0o777) }  // a worker running as another user may notify too
    }

    deinit {
        close(fd)
        if !address.hasPrefix("@") { unlink(address) }
    }

    /// The next message as its `KEY=VALUE` pairs (in order). Throws after `timeout`.
    public func receive(timeout: Duration = .seconds(10)) async throws -> [(key: String, value: String)] {
        let deadline = ContinuousClock.now + timeout
        var datagram: [UInt8]?
        while datagram == nil {
            let left = deadline - ContinuousClock.now
            guard left > .zero, try await awaitReadable(fd, timeout: left) else {
                throw TestProcessError("no notify message on \(address) within \(timeout)")
            }
            var buffer = [UInt8](repeating: 0, count: 65536)
            let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n >= 0 { datagram = Array(buffer[0..<n]) }
        }
        guard let datagram else { throw TestProcessError("no notify message on \(address)") }
        return String(decoding: datagram, as: UTF8.self).split(separator: "\n").map { line in
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
        }
    }

    /// Receives messages until one has `key` (with `value`, when given); returns that message.
    @discardableResult
    public func waitFor(
        _ key: String, value: String? = nil, timeout: Duration = .seconds(10)
    ) async throws -> [(key: String, value: String)] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else {
                throw TestProcessError("no \(key)\(value.map { "=\($0)" } ?? "") on \(address) within \(timeout)")
            }
            let message = try await receive(timeout: left)
            if message.contains(where: { $0.key == key && (value == nil || $0.value == value) }) { return message }
        }
    }
}
