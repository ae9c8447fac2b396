// The `dbus` figures (issue 2) in the common report format, for `all` (and `all --json`).
// The measurement is the DBus helper's `dbus` subcommand (DBusBench.swift): the same scenarios
// (our client calling a trivial method of our server, in process; our client calling the bus
// daemon's GetId, the floor) through its `measure` function; only the reporting is added here.
import DBus
import Foundation
import TestSupport

enum DBusRoundTrip {
    static func section(calls: Int = 20_000, rounds: Int = 3, inFlight: [Int] = [1, 16]) async throws -> Section {
        let bus = try await PrivateBus(directory: Interrupt.directory(prefix: "bgw-bench-bus"))
        return try await withCleanup(bus, cleanup: { await $0.stop() }) { bus in
            let server = try await DBusConnection.connect(.address(bus.address))
            let client = try await DBusConnection.connect(.address(bus.address))
            defer {
                server.close()
                client.close()
            }
            let path = try ObjectPath("/org/example/Bench")
            try server.export(try ExportedObject(path: path, interfaces: [
                DBusInterface("org.example.Bench", methods: [DBusMethod("Nop") { _ in [] }]),
            ]))
            let serverName = server.uniqueName
            let busPath = try ObjectPath("/org/freedesktop/DBus")
            let ours: Scenario = {
                _ = try await client.call(destination: serverName, path: path, interface: "org.example.Bench", member: "Nop")
            }
            let floor: Scenario = {
                _ = try await client.call(destination: "org.freedesktop.DBus", path: busPath,
                                          interface: "org.freedesktop.DBus", member: "GetId")
            }
            var section = Section("dbus: method round trip through a private dbus-daemon (issue 2)")
            for k in inFlight {
                progress("dbus: \(k) in flight")
                _ = try await measure(ours, calls: min(calls, 2000), inFlight: k)
                _ = try await measure(floor, calls: min(calls, 2000), inFlight: k)
                var a = Measurement(), b = Measurement()
                for _ in 0..<rounds {
                    a.merge(try await measure(ours, calls: calls, inFlight: k))
                    b.merge(try await measure(floor, calls: calls, inFlight: k))
                }
                let oursMs = Samples(a.latencies.map { $0 / 1e6 }), floorMs = Samples(b.latencies.map { $0 / 1e6 })
                let label = "\(k) in flight"
                section.figures.append(Figure("Nop (ours -> ours), \(label)", oursMs,
                                              baseline: ("GetId", floorMs.p50), aim: "<= 1.5x"))
                section.figures.append(Figure("  GetId (ours -> bus), \(label)", floorMs))
                section.figures.append(Figure("Nop calls/s, \(label)", unit: "calls/s", value: a.callsPerSecond,
                                              direction: .higherIsBetter, baseline: ("GetId calls/s", b.callsPerSecond),
                                              aim: "<= 1.5x"))
            }
            section.notes = [
                "our client (DBus module) calls `Nop` of our server (another connection of the same process, its own connection thread) through a private dbus-daemon; floor: the same client calling org.freedesktop.DBus.GetId, which dbus-daemon answers itself",
                "\(rounds) alternating rounds of \(calls) calls per scenario and concurrency (after 2000 warm-up calls each); with k in flight, k tasks call back to back; latency is per call, calls/s the total; the calls/s ratio is GetId's rate over ours",
                "the measurement is `bgworker-bench dbus` (DBusBench.swift); this section reports the same scenarios in the common format",
            ]
            return section
        }
    }
}
