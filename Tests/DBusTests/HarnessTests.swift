import Testing
import TestSupport

@Suite struct HarnessTests {
    @Test func privateBusAnswersBusctl() async throws {
        let bus = try await PrivateBus()
        defer { Task { await bus.stop() } }
        let r = try await run(["busctl", "--address=\(bus.unixAddress)", "call",
                               "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId"])
        #expect(r.status == 0, "busctl: \(r.stderr)")
        #expect(r.stdout.hasPrefix("s \""))
    }
}
