import Testing

@testable import BgWorkerCore
import TestSupport

/// The daemon's own threads have 2 MiB stacks (`startDedicatedThread` callers): a configuration
/// is parsed on one of them at Reload.
private let daemonStackSize = 2 << 20

private let limit = TOMLLimits.nestingDepth
private let tooDeepMessage =
    "nested too deeply: more than \(limit) levels of tables, dotted keys, arrays and inline tables (bgworker's limit)"

/// Parses on a daemon-sized stack; the result (and the value tree's deinit) stays on that thread.
private func parseOnDaemonStack(_ text: String) -> TOMLError? {
    runOnThread(stackSize: daemonStackSize) { () -> TOMLError? in
        do throws(TOMLError) {
            _ = try parseTOML(text)
            return nil
        } catch {
            return error
        }
    }
}

private func repeated(_ text: String, _ count: Int) -> String { String(repeating: text, count: count) }

@Suite struct TOMLNestingTests {
    /// A hostile document, shown by name (the text is megabytes).
    struct Shape: Sendable, CustomTestStringConvertible {
        let name: String
        let text: String
        var testDescription: String { name }
    }

    /// Issue 8's sizes: each crashed the daemon (stack overflow in the parser or in the deinit).
    @Test(arguments: [
        Shape(name: "100,000 nested arrays", text: "a = " + repeated("[", 100_000) + repeated("]", 100_000)),
        Shape(name: "50,000 nested inline tables", text: "a = " + repeated("{b = ", 50_000) + "1" + repeated("}", 50_000)),
        Shape(name: "35,000-part dotted key", text: "a" + repeated(".a", 34_999) + " = 1"),
        Shape(name: "35,000-part table header", text: "[a" + repeated(".a", 34_999) + "]"),
        Shape(name: "4,000 nested inline tables", text: "a = " + repeated("{b = ", 4_000) + "1" + repeated("}", 4_000)),
        Shape(name: "arrays of inline tables", text: "a = " + repeated("[{b = ", 20_000) + "1" + repeated("}]", 20_000)),
        Shape(
            name: "dotted keys in nested inline tables",
            text: "a = " + repeated("{b.c.d.e = ", 10_000) + "1" + repeated("}", 10_000)),
    ])
    func deepNestingIsRefused(shape: Shape) {
        #expect(parseOnDaemonStack(shape.text)?.message == tooDeepMessage, "\(shape.name)")
    }

    @Test func theLimitItselfIsAccepted() throws {
        // The key is level 1; 127 arrays hold each other, the innermost at level 127.
        #expect(parseOnDaemonStack("a = " + repeated("[", limit - 1) + repeated("]", limit - 1)) == nil)
        #expect(parseOnDaemonStack("a = " + repeated("[", limit) + repeated("]", limit))?.message == tooDeepMessage)
        #expect(parseOnDaemonStack("a" + repeated(".a", limit - 1) + " = 1") == nil)
        #expect(parseOnDaemonStack("a" + repeated(".a", limit) + " = 1")?.message == tooDeepMessage)
        #expect(parseOnDaemonStack("[a" + repeated(".a", limit - 2) + "]\nb = 1") == nil)
        #expect(parseOnDaemonStack("[a" + repeated(".a", limit - 1) + "]\nb = 1")?.message == tooDeepMessage)
        #expect(parseOnDaemonStack("a = " + repeated("{b = ", limit - 1) + "1" + repeated("}", limit - 1)) == nil)
        #expect(parseOnDaemonStack("a = " + repeated("{b = ", limit) + "1" + repeated("}", limit))?.message == tooDeepMessage)
    }

    @Test func theErrorNamesFileLineAndLimit() {
        let text = "[worker.a]\nexec = [\"/bin/true\"]\nenvironment = " + repeated("[", 200) + repeated("]", 200) + "\n"
        let result = runOnThread(stackSize: daemonStackSize) {
            Configuration.parse(main: SourceFile(path: "/etc/bgworker/bgworkerd.toml", text: text))
        }
        guard case .failure(let errors) = result else {
            Issue.record("accepted")
            return
        }
        #expect(errors.description == "/etc/bgworker/bgworkerd.toml:3: " + tooDeepMessage)
    }
}

@Suite struct TOMLEncodingTests {
    @Test(arguments: [
        ("a = \"x\"\nb = \"", [0xFF], "\"\n", 2, "0xFF"),
        ("a = 1\n\n# ", [0xC3, 0x28], "\n", 3, "0x28"),  // a lead byte without its continuation
        ("s = '", [0xC0, 0xAF], "'\n", 1, "0xC0"),  // overlong '/'
        ("s = \"", [0xED, 0xA0, 0x80], "\"\n", 1, "0xA0"),  // a surrogate
        ("s = \"", [0xF4, 0x90, 0x80, 0x80], "\"\n", 1, "0x90"),  // above U+10FFFF
        ("s = \"\"\"\n\n", [0xE2, 0x82], "", 3, "0xE2"),  // truncated at the end
        ("k", [0x80], " = 1", 1, "0x80"),  // a stray continuation byte in a bare key
    ] as [(String, [UInt8], String, Int, String)])
    func invalidUTF8IsRefusedAtItsLine(before: String, bad: [UInt8], after: String, line: Int, byte: String) {
        let file = SourceFile(path: "/etc/bgworker/bgworkerd.toml", bytes: Array(before.utf8) + bad + Array(after.utf8))
        guard case .failure(let errors) = Configuration.parse(main: file) else {
            Issue.record("accepted")
            return
        }
        #expect(errors.errors == [ConfigError(file: file.path, line: line, message: "invalid UTF-8 (byte \(byte)): the file must be UTF-8")])
    }

    @Test func validUTF8OfEveryLengthIsAccepted() throws {
        let table = try parseTOML(utf8: Array("s = \"a\u{E9}\u{20AC}\u{1F600}\u{10FFFF}\" # \u{FFFD}\n".utf8))
        #expect(table["s"]?.kind == .string("a\u{E9}\u{20AC}\u{1F600}\u{10FFFF}"))
    }
}

@Suite struct TOMLLinearTimeTests {
    /// A million escapes (2 MB) in one string: the parser that rebuilt a string per escape took
    /// 20 s in a debug build, this one 0.3 s; a generous bound, even on a loaded machine.
    @Test func aMillionEscapesParseQuickly() throws {
        let count = 1_000_000
        let text = "s = \"" + repeated("\\n", count - 1000) + repeated("\\u00e9", 1000) + "\""
        let clock = ContinuousClock()
        let start = clock.now
        let table = try parseTOML(text)
        let took = clock.now - start
        guard case .string(let value)? = table["s"]?.kind else {
            Issue.record("no string")
            return
        }
        #expect(value.unicodeScalars.count == count)
        #expect(took < .seconds(10), "\(took)")
    }

    @Test func wideDocumentsParseQuickly() throws {
        let keys = (0..<10_000).map { "k\($0) = { a = [1, 2], b.c = \"x\" }\n" }.joined()
        let array = "a = [" + repeated("{ x = 1 }, ", 10_000) + "]\n"
        let clock = ContinuousClock()
        let start = clock.now
        let table = try parseTOML("[t]\n" + keys + "[u]\n" + array)
        #expect(clock.now - start < .seconds(10))
        guard case .table(let t)? = table["t"]?.kind else {
            Issue.record("no t")
            return
        }
        #expect(t.keys.count == 10_000)
    }
}

@Suite struct TOMLKeyIdentityTests {
    /// TOML compares keys by code points; Swift's `String ==` by canonical equivalence.
    @Test func canonicallyEquivalentKeysAreDifferentKeys() throws {
        let table = try parseTOML("\"\\u00e9\" = 1\n\"e\\u0301\" = 2\n\"\\u00c5\" = 3\n\"\\u212b\" = 4\n[t]\n\"\\u212a\" = 5\nK = 6\n")
        #expect(table.keys.count == 5)
        #expect(table["\u{E9}"]?.kind == .integer(1))
        #expect(table["e\u{301}"]?.kind == .integer(2))
        #expect(table["\u{C5}"]?.kind == .integer(3))
        #expect(table["\u{212B}"]?.kind == .integer(4))
        guard case .table(let t)? = table["t"]?.kind else {
            Issue.record("no t")
            return
        }
        #expect(t["\u{212A}"]?.kind == .integer(5))
        #expect(t["K"]?.kind == .integer(6))
        #expect(TOMLValue.Kind.string("\u{E9}") != .string("e\u{301}"))
    }

    @Test func headersAndDottedKeysToo() throws {
        let table = try parseTOML("[\"\\u00e9\"]\nx = 1\n[\"e\\u0301\"]\nx = 2\na.\"\\u00c5\" = 1\na.\"\\u212b\" = 2\n")
        #expect(table.keys.count == 2)
        guard case .table(let second)? = table["e\u{301}"]?.kind else {
            Issue.record("no second table")
            return
        }
        #expect(second.keys.count == 2)
    }

    @Test func environmentNamesThatOnlyNormalizationTellsApartAreRefused() {
        let text = "[worker.a]\nexec = [\"/bin/true\"]\nenvironment = { \"\\u00e9\" = \"1\", \"e\\u0301\" = \"2\" }\n"
        guard case .failure(let errors) = Configuration.parse(main: SourceFile(path: "/m.toml", text: text)) else {
            Issue.record("accepted")
            return
        }
        #expect(
            errors.description
                == "/m.toml:3: [worker.a] environment variable 'e\u{301}' differs from another one only by Unicode normalization; use one spelling")
    }

    @Test func workerLookupComparesCodePoints() throws {
        let text = "[worker.K]\nexec = [\"/bin/true\"]\n"
        let configuration = try Configuration.parse(main: SourceFile(path: "/m.toml", text: text)).get()
        #expect(configuration.worker(named: "K") != nil)
        #expect(configuration.worker(named: "\u{212A}") == nil)  // KELVIN SIGN, canonically "K"
    }
}

@Suite struct TOMLTableLineTests {
    @Test func anExplicitHeaderGivesItsLineToATableFirstCreatedImplicitly() throws {
        let table = try parseTOML("\n\n[a.b.c]\nx = 1\n\n[a]\ny = 2\n")
        #expect(table["a"]?.line == 6)
        guard case .table(let a)? = table["a"]?.kind else {
            Issue.record("no a")
            return
        }
        #expect(a.line == 6)
        #expect(a["b"]?.line == 3)
    }
}
