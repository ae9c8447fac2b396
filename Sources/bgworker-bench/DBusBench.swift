import ArgumentParser
import DBus
import Foundation
import TestSupport

/// `bgworker-bench dbus`: round trips through a private bus. (a) our client calling a trivial
/// method of our server, (b) our client calling org.freedesktop.DBus.GetId, which the bus daemon
/// answers itself: the floor. Prints p50/p99 latency and calls/s for each number of calls in
/// flight, and the ratio a/b.
struct DBusBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dbus", abstract: "Round-trip latency and throughput of our D-Bus layer through a private bus.")

    @Option(help: "Calls per measured round.")
    var calls = 2_000

    @Option(help: "Rounds per scenario, alternating a and b so that a change of machine load hits both alike; samples merged.")
    var rounds = 20

    @Option(help: "Calls in flight, comma-separated.")
    var inFlight = "1,16"

    @Option(help: ArgumentHelp("Only serve: print the bus address and the server's unique name, serve for this many seconds (for other clients).", visibility: .hidden))
    var serveFor: Int?

    func run() async throws {
        let concurrencies = inFlight.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.filter { $0 > 0 }
        let bus = try await PrivateBus()
        defer { bus.directory.remove() }
        let server = try await DBusConnection.connect(.address(bus.address))
        let client = try await DBusConnection.connect(.address(bus.address))
        let path = try ObjectPath("/org/example/Bench")
        try server.export(try ExportedObject(path: path, interfaces: [
            DBusInterface("org.example.Bench", methods: [DBusMethod("Nop") { _ in [] }]),
        ]))
        let serverName = server.uniqueName
        if let serveFor {
            // Unbuffered: a caller reading a pipe or a file needs the line now.
            FileHandle.standardOutput.write(Data("\(bus.unixAddress) \(serverName ?? "")\n".utf8))
            try await Task.sleep(for: .seconds(serveFor))
            return
        }
        let busPath = try ObjectPath("/org/freedesktop/DBus")

        let ours: Scenario = {
            _ = try await client.call(destination: serverName, path: path, interface: "org.example.Bench", member: "Nop")
        }
        let floor: Scenario = {
            _ = try await client.call(destination: "org.freedesktop.DBus", path: busPath, interface: "org.freedesktop.DBus", member: "GetId")
        }

        #if DEBUG
        print("warning: a debug build; use `swift build -c release --product bgworker-bench`")
        #endif
        print("D-Bus round trips through a private dbus-daemon, \(calls) calls x \(rounds) rounds per scenario")
        print("(a) our client -> bus -> our server (trivial method)   (b) our client -> bus daemon GetId (floor)")
        print("")
        print(pad("in flight", 10) + pad("scenario", 10) + pad("p50 µs", 10) + pad("p99 µs", 10) + pad("calls/s", 12))
        for k in concurrencies {
            // Warm up both paths.
            _ = try await measure(ours, calls: 2000, inFlight: k)
            _ = try await measure(floor, calls: 2000, inFlight: k)
            var a = Measurement(), b = Measurement()
            for _ in 0..<rounds {
                a.merge(try await measure(ours, calls: calls, inFlight: k))
                b.merge(try await measure(floor, calls: calls, inFlight: k))
            }
            for (name, m) in [("(a) ours", a), ("(b) GetId", b)] {
                print(pad("\(k)", 10) + pad(name, 10) + pad(format(m.percentile(0.5)), 10) + pad(format(m.percentile(0.99)), 10)
                      + pad(String(format: "%.0f", m.callsPerSecond), 12))
            }
            print(pad("", 10) + pad("a/b", 10) + pad(String(format: "%.2fx", m2(a.percentile(0.5), b.percentile(0.5))), 10)
                  + pad(String(format: "%.2fx", m2(a.percentile(0.99), b.percentile(0.99))), 10)
                  + pad(String(format: "%.2fx", b.callsPerSecond / max(a.callsPerSecond, 1)), 12) + "(throughput: b/a)")
        }
        server.close()
        client.close()
        await bus.stop()
    }

    private func m2(_ a: Double, _ b: Double) -> Double { b > 0 ? a / b : 0 }
    private func format(_ ns: Double) -> String { String(format: "%.1f", ns / 1000) }
    private func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }
}

typealias Scenario = @Sendable () async throws -> Void

/// Latencies in nanoseconds and the wall time they took.
struct Measurement: Sendable {
    var latencies: [Double] = []
    var wall: Double = 0

    mutating func merge(_ other: Measurement) {
        latencies += other.latencies
        wall += other.wall
    }

    var callsPerSecond: Double { wall > 0 ? Double(latencies.count) / (wall / 1e9) : 0 }

    func percentile(_ p: Double) -> Double {
        guard !latencies.isEmpty else { return 0 }
        let sorted = latencies.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }
}

/// `calls` calls split over `inFlight` tasks that each call in a loop.
func measure(_ scenario: @escaping Scenario, calls: Int, inFlight: Int) async throws -> Measurement {
    let clock = ContinuousClock()
    let start = clock.now
    let perTask = calls / inFlight
    let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
        for _ in 0..<inFlight {
            group.addTask {
                var mine: [Double] = []
                mine.reserveCapacity(perTask)
                for _ in 0..<perTask {
                    let t0 = clock.now
                    try await scenario()
                    let d = clock.now - t0
                    mine.append(Double(d.components.seconds) * 1e9 + Double(d.components.attoseconds) / 1e9)
                }
                return mine
            }
        }
        var all: [Double] = []
        for try await part in group { all += part }
        return all
    }
    let wall = clock.now - start
    return Measurement(latencies: latencies, wall: Double(wall.components.seconds) * 1e9 + Double(wall.components.attoseconds) / 1e9)
}
