@testable import DBus
import Foundation
import Testing
import TestSupport

@Suite struct ConnectionTests {
    @Test func connectsAndCallsTheBus() async throws {
        try await withBus { fx in
            let c = try await fx.connect()
            #expect(c.uniqueName?.hasPrefix(":") == true)
            let id = try await c.call(destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"),
                                      interface: "org.freedesktop.DBus", member: "GetId")
            #expect(id.first?.stringValue?.count == 32)
            await expectDBusError("org.freedesktop.DBus.Error.ServiceUnknown") {
                _ = try await c.call(destination: "org.example.Nobody", path: .root, interface: "org.example.X", member: "Y")
            }
            c.close()
        }
    }

    @Test func connectFailureIsTyped() async throws {
        do {
            _ = try await DBusConnection.connect(.address("unix:path=/nonexistent/bus.sock"))
            Issue.record("connected to nothing")
        } catch let e as DBusConnectionError {
            #expect(e.code == .connectFailed)
        }
    }

    @Test func peerToPeerModeSkipsHello() async throws {
        try await withBus { fx in
            let c = try await fx.connect(busClient: false)
            #expect(c.uniqueName == nil)
            // The bus answers Hello for us by hand: we are a plain peer of the daemon.
            let hello = try await c.call(destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"),
                                         interface: "org.freedesktop.DBus", member: "Hello")
            #expect(hello.first?.stringValue?.hasPrefix(":") == true)
            c.close()
        }
    }

    @Test func localValidationRefusesBadInput() async throws {
        try await withBus { fx in
            let c = try await fx.connect()
            for (dest, iface, member) in [("bad name", "org.x.Y", "M"), ("org.x.Y", "noDots", "M"), ("org.x.Y", "org.x.Y", "1bad")] {
                do {
                    _ = try await c.call(destination: dest, path: .root, interface: iface, member: member)
                    Issue.record("accepted \(dest) \(iface) \(member)")
                } catch let e as DBusConnectionError {
                    #expect(e.code == .invalidArgument)
                }
            }
            let bad: [[DBusValue]] = [
                [.string("nul\0inside")],
                [.array(.int32, [.string("not an int")])],
                [.structure([])],
                [.dictionary(key: .variant, value: .int32, [])],
            ]
            for args in bad {
                do {
                    _ = try await c.call(destination: "org.freedesktop.DBus", path: .root, interface: nil, member: "Ping", arguments: args)
                    Issue.record("accepted \(args)")
                } catch let e as DBusConnectionError {
                    #expect(e.code == .invalidArgument)
                }
            }
            // Still usable afterwards.
            _ = try await c.call(destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"),
                                 interface: "org.freedesktop.DBus", member: "GetId")
            c.close()
        }
    }

    @Test func callTimesOutAtItsDeadline() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            let object = try ExportedObject(path: Samples.path, interfaces: [
                DBusInterface("org.example.Slow", methods: [
                    DBusMethod("Hang") { _ in
                        try await Task.sleep(for: .seconds(30))
                        return []
                    }
                ])
            ])
            try server.export(object)
            let start = ContinuousClock.now
            do {
                _ = try await client.call(destination: server.uniqueName, path: Samples.path, interface: "org.example.Slow",
                                          member: "Hang", timeout: .milliseconds(200))
                Issue.record("no timeout")
            } catch let e as DBusConnectionError {
                #expect(e.code == .timeout)
            }
            #expect(ContinuousClock.now - start < .seconds(5))
            server.close()
            client.close()
        }
    }

    @Test func cancellingACallEndsItAtOnce() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            let (started, startedContinuation) = AsyncStream<Void>.makeStream()
            try server.export(try ExportedObject(path: Samples.path, interfaces: [
                DBusInterface("org.example.Slow", methods: [
                    DBusMethod("Hang") { _ in
                        startedContinuation.yield()
                        try await Task.sleep(for: .seconds(30))
                        return []
                    }
                ])
            ]))
            let destination = server.uniqueName
            let task = Task {
                try await client.call(destination: destination, path: Samples.path, interface: "org.example.Slow", member: "Hang")
            }
            _ = try await next("the handler to start", of: started)
            task.cancel()
            let result = await task.result
            #expect(throws: CancellationError.self) { try result.get() }
            server.close()
            client.close()
        }
    }
}

/// `yieldOnNextWake` is a one-shot: the first wake of the connection thread takes it.
@Suite struct HandOffYieldTests {
    @Test func theNextWakeTakesItAndOnlyIt() async throws {
        try await withBus { fx in
            let c = try await fx.connect()
            let path = try ObjectPath("/a")
            func armed() -> Bool { c.core.yieldOnWake.load(ordering: .relaxed) }
            c.yieldOnNextWake()
            #expect(armed())
            // A signal from this task wakes the connection thread unless a wake is already
            // pending; a round trip lets the thread finish and sleep before the next try.
            for _ in 0..<100 where armed() {
                try c.emitSignal(path: path, interface: "org.example.A", member: "B", arguments: [.uint32(1), .uint32(2)])
                _ = try await c.callBus("GetId")
            }
            #expect(!armed(), "one of 100 signals woke the thread and took it")
            try c.emitSignal(path: path, interface: "org.example.A", member: "B", arguments: [.uint32(3), .uint32(4)])
            #expect(!armed(), "taken once, not armed again")
            c.close()
        }
    }
}

/// An idle connection does not wake: once every call of ours is answered, no deadline timer is
/// left armed. It was: the timer of a call's deadline fired at that deadline although the reply
/// had long come (bgworkerd's bus thread woke once, 25 s after each admin call, in an idle
/// window of scripts/adversarial/notify.py).
@Suite struct ConnectionIdleTests {
    /// Context switches of each `bgw-bus` thread of this process, by tid.
    static func busThreads() -> [String: Int] {
        var out: [String: Int] = [:]
        for tid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
                  comm.hasPrefix("bgw-bus"),
                  let status = try? String(contentsOfFile: "/proc/self/task/\(tid)/status", encoding: .utf8) else { continue }
            out[tid] = status.split(separator: "\n").filter { $0.contains("ctxt_switches:") }
                .compactMap { Int($0.split(separator: "\t").last?.trimmingCharacters(in: .whitespaces) ?? "") }.reduce(0, +)
        }
        return out
    }

    @Test func anAnsweredCallLeavesNoTimerToWakeFor() async throws {
        try await withBus { fx in
            let c = try await fx.connect()
            // Its own thread by id: tests running in parallel start bgw-bus threads of their own.
            let mine = String(c.core.loopThreadID.load(ordering: .acquiring))
            #expect(Self.busThreads()[mine] != nil)
            _ = try await c.call(destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"),
                                 interface: "org.freedesktop.DBus", member: "GetId", timeout: .seconds(1))
            // A window across the call's deadline (1 s after it was sent): nothing may wake the thread.
            try await Task.sleep(for: .milliseconds(200))
            let start = Self.busThreads()[mine]
            try await Task.sleep(for: .milliseconds(1500))
            let end = Self.busThreads()[mine]
            #expect(start != nil && start == end, "the connection's thread woke \((end ?? 0) - (start ?? 0)) times while idle")
            c.close()
        }
    }
}
