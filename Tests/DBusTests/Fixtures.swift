import DBus
import Foundation
import Testing
import TestSupport

/// A private bus and connections on it, torn down by `stop()`.
struct BusFixture {
    let bus: PrivateBus

    static func start() async throws -> BusFixture {
        BusFixture(bus: try await PrivateBus())
    }

    func connect(busClient: Bool = true) async throws -> DBusConnection {
        try await DBusConnection.connect(.address(bus.address), busClient: busClient, timeout: .seconds(10))
    }

    func stop() async { await bus.stop() }
}

/// Runs `body` with a fresh bus that is stopped afterwards, whatever happens.
func withBus<T>(_ body: (BusFixture) async throws -> T) async throws -> T {
    let fixture = try await BusFixture.start()
    do {
        let result = try await body(fixture)
        await fixture.stop()
        return result
    } catch {
        await fixture.stop()
        throw error
    }
}

/// The next element of an async sequence, or a failure after `timeout`.
func next<S: AsyncSequence & Sendable>(_ what: String, of sequence: S, timeout: Duration = .seconds(10),
                                      where predicate: @escaping @Sendable (S.Element) -> Bool = { _ in true }) async throws -> S.Element
where S.Element: Sendable {
    try await waitFor(what, in: sequence, timeout: timeout, until: predicate)
}

/// Expects `body` to throw a `DBusError` named `name`; returns it.
@discardableResult
func expectDBusError(_ name: String, sourceLocation: SourceLocation = #_sourceLocation,
                     _ body: () async throws -> Void) async -> DBusError? {
    do {
        try await body()
        Issue.record("expected \(name), got success", sourceLocation: sourceLocation)
    } catch let error as DBusError {
        #expect(error.name == name, "\(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected \(name), got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Values of every type, nested, for round trips.
enum Samples {
    static let path = try! ObjectPath("/org/example/Test")

    static var everyType: [DBusValue] {
        [
            .byte(0xFE), .bool(true), .bool(false), .int16(-12345), .uint16(54321), .int32(-2_000_000_000),
            .uint32(4_000_000_000), .int64(-9_000_000_000_000_000_000), .uint64(18_000_000_000_000_000_000),
            .double(3.25), .double(-0.0), .string(""), .string("héllo ☃ 'quoted' \"x\""),
            .objectPath(.root), .objectPath(try! ObjectPath("/a/b_c/D9")),
            .signature(try! Signature("a{sv}(iu)")), .signature(.empty),
            .array(.int32, []), .array(.string, [.string("a"), .string("b")]),
            .array(.array(.byte), [.array(.byte, [.byte(1), .byte(2)]), .array(.byte, [])]),
            .dictionary(key: .string, value: .variant, []),
            .variantDictionary(["a": .int32(1), "b": .string("two"), "c": .array(.double, [.double(1.5)]),
                                "d": .variant(.variant(.bool(true)))]),
            .dictionary(key: .uint64, value: .structure([.string, .array(.objectPath)]), [
                DBusDictEntry(.uint64(7), .structure([.string("seven"), .array(.objectPath, [.objectPath(.root)])])),
            ]),
            .structure([.int32(1), .structure([.string("in"), .variant(.array(.int16, [.int16(-1)]))])]),
            .array(.structure([.string, .string, .bool, .uint32, .objectPath]), [
                .structure([.string("w"), .string("running"), .bool(true), .uint32(42), .objectPath(.root)]),
            ]),
            .variant(.structure([.byte(1), .dictionary(key: .int32, value: .string, [DBusDictEntry(.int32(1), .string("x"))])])),
        ]
    }
}
