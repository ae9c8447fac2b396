import DBus
import Testing

/// Pure checks of names, signatures, values and match rules (no bus).
@Suite struct ValueTests {
    @Test(arguments: ["y", "b", "n", "q", "i", "u", "x", "t", "d", "s", "o", "g", "h", "v", "as", "a{sv}", "a{oa{sa{sv}}}",
                      "(ussa(ii))", "aay", "sa{sv}as", "", "a(ssbuo)", "(v)"])
    func validSignatures(_ s: String) throws {
        let sig = try Signature(s)
        #expect(sig.rawValue == s)
        #expect(sig.types.map(\.signature).joined() == s)
    }

    @Test(arguments: ["a", "()", "(i", "i)", "a{vs}", "{ss}", "a{s}", "a{sss}", "z", "a{ass}", String(repeating: "a", count: 33) + "i",
                      String(repeating: "(", count: 33) + "i" + String(repeating: ")", count: 33), String(repeating: "i", count: 256)])
    func invalidSignatures(_ s: String) {
        #expect(throws: DBusConnectionError.self) { try Signature(s) }
    }

    @Test func names() {
        for good in ["/", "/a", "/org/example/BgWorker", "/a_b/C9"] { #expect(NameRules.isValidObjectPath(good), "\(good)") }
        for bad in ["", "a", "//", "/a/", "/a//b", "/a-b", "/ä"] { #expect(!NameRules.isValidObjectPath(bad), "\(bad)") }
        for good in ["org.example.X", "a.b", "_a.b_c", "org.example.BgWorker.Error.NoSuchWorker"] {
            #expect(NameRules.isValidInterfaceName(good), "\(good)")
        }
        for bad in ["org", "org.", ".org.x", "org.1x", "org.x-y", "org..x", String(repeating: "a.", count: 128) + "a"] {
            #expect(!NameRules.isValidInterfaceName(bad), "\(bad)")
        }
        for good in ["Get", "_x", "A9"] { #expect(NameRules.isValidMemberName(good), "\(good)") }
        for bad in ["", "9a", "a.b", "a-b"] { #expect(!NameRules.isValidMemberName(bad), "\(bad)") }
        for good in [":1.42", ":1.a-b", "org.example.Bg-Worker", "org.freedesktop.DBus"] { #expect(NameRules.isValidBusName(good), "\(good)") }
        for bad in ["", ":1", "org", "org.1a", ":", "org..x"] { #expect(!NameRules.isValidBusName(bad), "\(bad)") }
    }

    @Test func pathElementEscaping() {
        #expect(ObjectPath.escapeElement("db-sync") == "db_2dsync")
        #expect(ObjectPath.escapeElement("9lives") == "_39lives")
        #expect(ObjectPath.escapeElement("a.b@c") == "a_2eb_40c")
        #expect(ObjectPath.escapeElement("") == "_")
        #expect(ObjectPath.escapeElement("ok9") == "ok9")
    }

    @Test func valueTypesAndConformance() throws {
        let v = DBusValue.variantDictionary(["b": .int32(1), "a": .string("x")])
        #expect(v.signature.rawValue == "a{sv}")
        #expect(v.stringKeyedDictionary?["a"] == .variant(.string("x")))
        #expect(v.conforms(to: try DBusType("a{sv}")))
        #expect(!v.conforms(to: try DBusType("a{si}")))
        #expect(!DBusValue.array(.int32, [.string("x")]).conforms(to: .array(.int32)))
        #expect([DBusValue.string("s"), .uint32(1), .stringArray(["a"])].signature.rawValue == "suas")
        #expect(DBusValue.structure([.string("w"), .bool(true)]).type == .structure([.string, .bool]))
    }

    /// Only `variant` is indirect: scalars, strings and containers are stored inline, with no
    /// heap box per value (the whole-enum `indirect` made it 8 bytes, a pointer to a box).
    @Test func valuesAreStoredInline() {
        #expect(MemoryLayout<DBusValue>.size == 24)
        #expect(MemoryLayout<DBusValue?>.size == 24)
    }

    /// Optionals of every type, copied through generic code, existentials and hashing: the
    /// copies a debug build outlines per type. A build that links objects compiled against two
    /// layouts of `DBusValue` (a stale incremental build) fails or crashes here.
    @Test func optionalValuesOfEveryTypeCopyAndCompare() {
        for value in Samples.everyType + [.variant(.string("x")), .string("x"), .uint32(5)] {
            let wrapped: DBusValue? = value
            let boxed: Any = wrapped as Any
            #expect(wrapped == value, "\(value)")
            #expect((boxed as? DBusValue?) == wrapped, "\(value)")
            #expect([value: 1][value] == 1, "\(value)")
        }
    }

    @Test func matchRuleText() throws {
        let rule = MatchRule(sender: "org.example.X", path: try ObjectPath("/a"), interface: "org.example.X", member: "Changed",
                             arguments: [0: "it's"], argumentPaths: [1: "/a/"])
        #expect(rule.description == "type='signal',sender='org.example.X',path='/a',interface='org.example.X',member='Changed',arg0='it'\\''s',arg1path='/a/'")
    }
}
