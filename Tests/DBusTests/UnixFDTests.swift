import CShims
import DBus
import Foundation
import Synchronization
import Testing
import TestSupport

/// Ownership of `h` values (`UnixFD`): who closes a descriptor, and that it is closed exactly
/// once. Descriptors are counted in /proc/self/fd by the pipe they belong to, so descriptors
/// other tests open meanwhile do not disturb the counts.
@Suite struct UnixFDTests {
    static let interface = "org.example.FD"
    static let path = try! ObjectPath("/org/example/FD")

    /// What the server's handler received, kept until the test lets it go.
    final class Received: Sendable {
        let value = Mutex<DBusValue?>(nil)
        let taken = Mutex<Int32?>(nil)
    }

    /// `Keep(h)`: holds the received value in `received.value`, answers its descriptor number.
    /// `Take(h)`: takes the descriptor out of the value into `received.taken`.
    static func object(_ received: Received) throws -> ExportedObject {
        try ExportedObject(path: path, interfaces: [
            DBusInterface(interface, methods: [
                DBusMethod("Keep", in: [DBusArgument("fd", .unixFD)], out: [DBusArgument("number", .int32)]) { call in
                    received.value.withLock { $0 = call.arguments[0] }
                    return [.int32(call.arguments[0].unixFDValue?.rawValue ?? -1)]
                },
                DBusMethod("Take", in: [DBusArgument("fd", .unixFD)], out: [DBusArgument("number", .int32)]) { call in
                    let taken = call.arguments[0].unixFDValue?.take()
                    received.taken.withLock { $0 = taken }
                    return [.int32(taken ?? -1)]
                },
            ]),
        ])
    }

    /// A pipe (close-on-exec) and the inode that names it in /proc/self/fd (`pipe:[inode]`).
    struct Pipe {
        let read: Int32
        let write: Int32
        let link: String

        init() throws {
            var fds: [Int32] = [-1, -1]
            // Close-on-exec from the start: a process another test spawns must not inherit an end.
            try #require(_bgw_pipe_cloexec(&fds) == 0)
            read = fds[0]
            write = fds[1]
            var info = stat()
            try #require(fstat(read, &info) == 0)
            link = "pipe:[\(info.st_ino)]"
        }

        /// The descriptors of this process open on the pipe (either end), sorted.
        var open: [Int32] {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return names.compactMap { name -> Int32? in
                guard let fd = Int32(name) else { return nil }
                var buffer = [CChar](repeating: 0, count: 64)
                let n = readlink("/proc/self/fd/\(name)", &buffer, buffer.count - 1)
                guard n > 0 else { return nil }
                return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == link ? fd : nil
            }.sorted()
        }

        /// Waits for end of file on the read end: every copy of the write end, in every process
        /// (ours, the bus daemon's), has been closed.
        func waitForAllWritersClosed(timeout: Duration = .seconds(10)) async throws -> Bool {
            guard try await awaitReadable(read, timeout: timeout) else { return false }
            var byte: UInt8 = 0
            return Glibc.read(read, &byte, 1) == 0
        }
    }

    /// A bus with a server exporting `object(received)`, a client calling it with one argument
    /// (`call(member, argument)`), and a pipe; all closed afterwards.
    static func withServer(_ body: (_ call: (String, DBusValue) async throws -> [DBusValue], Received, Pipe) async throws -> Void) async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            let received = Received()
            try server.export(try object(received))
            let pipe = try Pipe()
            defer {
                close(pipe.read)
                server.close()
                client.close()
            }
            let destination = server.uniqueName
            try await body({ member, argument in
                try await client.call(destination: destination, path: path, interface: interface, member: member, arguments: [argument])
            }, received, pipe)
        }
    }

    @Test func aSentDescriptorStaysTheSendersAndTheReceivedCopyClosesWithItsValue() async throws {
        try await Self.withServer { call, received, pipe in
            let sent = UnixFD(taking: pipe.write)
            let reply = try await call("Keep", .unixFD(sent))
            // Sending duplicated it into the message: ours is still open, under its number.
            #expect(sent.rawValue == pipe.write)
            // The receiver got a duplicate of its own (a new number on the same pipe).
            let theirs = try #require(reply.first?.int32Value)
            #expect(theirs >= 0 && theirs != pipe.write)
            #expect(pipe.open.contains(theirs) && pipe.open.contains(pipe.write))

            // Dropping the last reference to the received value closes its duplicate; closing
            // ours closes the last write end anywhere: the reader sees end of file.
            received.value.withLock { $0 = nil }
            sent.close()
            #expect(!sent.isOpen && sent.take() == nil)
            #expect(try await pipe.waitForAllWritersClosed())
            #expect(pipe.open == [pipe.read])
        }
    }

    @Test func aTakenDescriptorOutlivesItsValue() async throws {
        try await Self.withServer { call, received, pipe in
            // Our own value is dropped right after the call: only the server's taken copy remains.
            let reply = try await call("Take", .unixFD(UnixFD(taking: pipe.write)))
            let taken = try #require(received.taken.withLock { $0 })
            #expect(reply == [.int32(taken)])
            // A second round trip: the first handler's task (and its copy of the value) has ended.
            _ = try await call("Keep", .unixFD(try UnixFD(duplicating: pipe.read)))
            received.value.withLock { $0 = nil }
            #expect(fcntl(taken, F_GETFD) != -1, "the taken descriptor was closed with its value")
            #expect(pipe.open.contains(taken))

            close(taken)
            #expect(try await pipe.waitForAllWritersClosed())
        }
    }

    /// A descriptor is closed once: after `close()` (or `take()`), neither a second `close()` nor
    /// the deinit touches the number again, though another file may have it by then.
    @Test func neverClosedTwice() throws {
        let pipe = try Pipe()
        defer {
            close(pipe.read)
            close(pipe.write)
        }
        // High numbers, so that other tests (given the lowest free numbers) do not take ours
        // between the close and the reuse below.
        let first = fcntl(pipe.read, F_DUPFD_CLOEXEC, 900)
        try #require(first >= 900)
        let reused: Int32
        do {
            let owned = UnixFD(taking: first)
            let copies = [DBusValue.unixFD(owned), .variant(.unixFD(owned)), .array(.unixFD, [.unixFD(owned)])]
            owned.close()
            owned.close()
            #expect(!owned.isOpen && owned.take() == nil)
            reused = fcntl(pipe.read, F_DUPFD_CLOEXEC, 900)
            withExtendedLifetime(copies) {}
        }  // the last references to `owned` go here: its deinit must not close `reused`
        defer { if reused >= 0 { close(reused) } }
        try #require(reused == first, "another thread took descriptor \(first)")
        #expect(fcntl(reused, F_GETFD) != -1)

        var taking: UnixFD? = try UnixFD(duplicating: pipe.read)
        let number = try #require(taking?.take())
        taking = nil
        #expect(fcntl(number, F_GETFD) != -1)
        close(number)
    }

    @Test func aClosedDescriptorIsRefusedBeforeSending() async throws {
        try await withBus { fx in
            let client = try await fx.connect()
            let closed = UnixFD(taking: -1)
            #expect(!closed.isOpen)
            do {
                _ = try await client.call(destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"),
                                          interface: "org.freedesktop.DBus.Peer", member: "Ping", arguments: [.unixFD(closed)])
                Issue.record("a closed descriptor was sent")
            } catch let error as DBusConnectionError {
                #expect(error.code == .invalidArgument)
            }
            client.close()
        }
    }
}
