import Foundation
import Testing

@testable import BgWorkerCore

/// toml-test's TOML 1.0 cases (vendored in `toml-test/`, see its README): every valid case decodes
/// to the expected values, except those that use what bgworker refuses by design (dates and
/// times, arrays of tables), which must be refused with that reason; every invalid case is refused
/// except the TOML 1.1 forms listed in `acceptedInvalid`.
@Suite struct TOMLComplianceTests {
    static let directory: String = {
        let file = #filePath
        return String(file[..<file.lastIndex(of: "/")!]) + "/toml-test"
    }()

    /// Invalid in TOML 1.0, accepted on purpose because TOML 1.1 allows them and the parser
    /// follows 1.1 there (the configuration documents may be written either way).
    static let acceptedInvalid: [String: String] = [
        "invalid/inline-table/linebreak-01.toml": "TOML 1.1: newlines inside an inline table",
        "invalid/inline-table/linebreak-02.toml": "TOML 1.1: newlines inside an inline table",
        "invalid/inline-table/linebreak-03.toml": "TOML 1.1: newlines inside an inline table",
        "invalid/inline-table/linebreak-04.toml": "TOML 1.1: newlines inside an inline table",
        "invalid/inline-table/trailing-comma.toml": "TOML 1.1: a trailing comma in an inline table",
    ]

    static func cases(_ kind: String) throws -> [String] {
        let list = try String(contentsOfFile: directory + "/files-toml-1.0.0", encoding: .utf8)
        return list.split(separator: "\n").map(String.init).filter { $0.hasPrefix(kind + "/") && $0.hasSuffix(".toml") }
    }

    static func bytes(_ path: String) throws -> [UInt8] {
        [UInt8](try #require(FileManager.default.contents(atPath: directory + "/" + path), "\(path)"))
    }

    @Test func theVendoredListIsComplete() throws {
        #expect(try Self.cases("valid").count == 210)
        #expect(try Self.cases("invalid").count == 499)
        for name in Self.acceptedInvalid.keys { #expect(try Self.cases("invalid").contains(name), "\(name)") }
    }

    @Test func validCasesDecodeToTheExpectedValues() throws {
        var decoded = 0
        var refusedByDesign = 0
        for path in try Self.cases("valid") {
            let source = try Self.bytes(path)
            let expected = try JSON.parse(try Self.bytes(String(path.dropLast(5)) + ".json"))
            if let reason = Self.refusedByDesign(source: source, expected: expected) {
                do {
                    _ = try parseTOML(utf8: source)
                    Issue.record("\(path) uses \(reason) and was accepted")
                } catch {
                    #expect(error.message.contains("not used in bgworker's configuration"), "\(path): \(error)")
                }
                refusedByDesign += 1
                continue
            }
            do {
                let table = try parseTOML(utf8: source)
                if let difference = Self.difference(TOMLValue(.table(table), line: 1), expected, at: "") {
                    Issue.record("\(path): \(difference)")
                }
                decoded += 1
            } catch {
                Issue.record("\(path): \(error)")
            }
        }
        #expect(decoded > 150, "decoded \(decoded), refused by design \(refusedByDesign)")
    }

    @Test func invalidCasesAreRefused() throws {
        for path in try Self.cases("invalid") {
            let source = try Self.bytes(path)
            let accepted = (try? parseTOML(utf8: source)) != nil
            if let reason = Self.acceptedInvalid[path] {
                #expect(accepted, "\(path) is listed as accepted (\(reason)) but is refused: remove it from the list")
            } else {
                #expect(!accepted, "\(path) is invalid TOML 1.0 and was accepted")
            }
        }
    }

    // MARK: Helpers

    /// Why bgworker refuses a valid document by design, or nil.
    static func refusedByDesign(source: [UInt8], expected: JSON) -> String? {
        if expected.containsType(["datetime", "datetime-local", "date-local", "time-local"]) { return "dates or times" }
        let lines = String(decoding: source, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        if lines.contains(where: { $0.drop(while: { $0 == " " || $0 == "\t" }).hasPrefix("[[") }) {
            return "arrays of tables"
        }
        return nil
    }

    /// Where `value` differs from toml-test's JSON form, or nil.
    static func difference(_ value: TOMLValue, _ expected: JSON, at path: String) -> String? {
        switch (value.kind, expected) {
        case (.table(let table), .object(let members)):
            guard table.keys.count == members.count else {
                return "\(path): keys \(table.keys) expected \(members.map(\.0))"
            }
            for (key, member) in members {
                guard let element = table[key], table.keys.contains(where: { $0.utf8.elementsEqual(key.utf8) }) else {
                    return "\(path): key '\(key)' is missing"
                }
                if let difference = difference(element, member, at: path + "." + key) { return difference }
            }
            return nil
        case (.array(let elements), .array(let items)):
            guard elements.count == items.count else { return "\(path): \(elements.count) elements, expected \(items.count)" }
            for (offset, (element, item)) in zip(elements, items).enumerated() {
                if let difference = difference(element, item, at: path + "[\(offset)]") { return difference }
            }
            return nil
        case (_, .leaf(let type, let text)):
            switch (value.kind, type) {
            case (.string(let string), "string"):
                return string.utf8.elementsEqual(text.utf8) ? nil : "\(path): \(string.debugDescription) expected \(text.debugDescription)"
            case (.integer(let number), "integer"):
                return Int64(text) == number ? nil : "\(path): \(number) expected \(text)"
            case (.float(let number), "float"):
                return sameFloat(number, text) ? nil : "\(path): \(number) expected \(text)"
            case (.boolean(let flag), "bool"):
                return String(flag) == text ? nil : "\(path): \(flag) expected \(text)"
            default:
                return "\(path): \(value.typeDescription) expected \(type) \(text)"
            }
        default:
            return "\(path): \(value.typeDescription) does not match \(expected)"
        }
    }

    static func sameFloat(_ number: Double, _ text: String) -> Bool {
        switch text {
        case "nan", "+nan", "-nan": return number.isNaN
        case "inf", "+inf": return number == .infinity
        case "-inf": return number == -.infinity
        default: return Double(text) == number
        }
    }
}

/// Just enough JSON for toml-test's expected values; objects keep their members as written so
/// that keys are compared by code points.
enum JSON: CustomStringConvertible {
    case object([(String, JSON)])
    case array([JSON])
    case string(String)
    /// `{"type": ..., "value": ...}` with two strings: a TOML scalar.
    case leaf(type: String, value: String)
    case other(String)

    var description: String {
        switch self {
        case .object(let members): "{" + members.map { "\($0.0.debugDescription): \($0.1)" }.joined(separator: ", ") + "}"
        case .array(let items): "[" + items.map(\.description).joined(separator: ", ") + "]"
        case .string(let text): text.debugDescription
        case .leaf(let type, let value): "\(type) \(value.debugDescription)"
        case .other(let text): text
        }
    }

    func containsType(_ types: Set<String>) -> Bool {
        switch self {
        case .object(let members): members.contains { $0.1.containsType(types) }
        case .array(let items): items.contains { $0.containsType(types) }
        case .leaf(let type, _): types.contains(type)
        case .string, .other: false
        }
    }

    struct Malformed: Error {}

    static func parse(_ bytes: [UInt8]) throws -> JSON {
        var reader = Reader(bytes: bytes)
        let value = try reader.value()
        reader.skipSpace()
        guard reader.index == bytes.count else { throw Malformed() }
        return value
    }

    private struct Reader {
        let bytes: [UInt8]
        var index = 0

        mutating func skipSpace() {
            while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
        }

        mutating func expect(_ byte: UInt8) throws {
            skipSpace()
            guard index < bytes.count, bytes[index] == byte else { throw Malformed() }
            index += 1
        }

        mutating func value() throws -> JSON {
            skipSpace()
            guard index < bytes.count else { throw Malformed() }
            switch bytes[index] {
            case UInt8(ascii: "{"):
                index += 1
                var members: [(String, JSON)] = []
                skipSpace()
                if bytes[index] == UInt8(ascii: "}") {
                    index += 1
                    return .object([])
                }
                while true {
                    skipSpace()
                    let key = try string()
                    try expect(UInt8(ascii: ":"))
                    members.append((key, try value()))
                    skipSpace()
                    index += 1
                    if bytes[index - 1] == UInt8(ascii: "}") { break }
                    guard bytes[index - 1] == UInt8(ascii: ",") else { throw Malformed() }
                }
                if members.count == 2, let type = members.first(where: { $0.0 == "type" }), let value = members.first(where: { $0.0 == "value" }),
                    case .string(let typeName) = type.1, case .string(let text) = value.1
                {
                    return .leaf(type: typeName, value: text)
                }
                return .object(members)
            case UInt8(ascii: "["):
                index += 1
                var items: [JSON] = []
                skipSpace()
                if bytes[index] == UInt8(ascii: "]") {
                    index += 1
                    return .array([])
                }
                while true {
                    items.append(try value())
                    skipSpace()
                    index += 1
                    if bytes[index - 1] == UInt8(ascii: "]") { break }
                    guard bytes[index - 1] == UInt8(ascii: ",") else { throw Malformed() }
                }
                return .array(items)
            case UInt8(ascii: "\""):
                return .string(try string())
            default:
                let start = index
                while index < bytes.count, !",]} \n\t\r".utf8.contains(bytes[index]) { index += 1 }
                return .other(String(decoding: bytes[start..<index], as: UTF8.self))
            }
        }

        mutating func string() throws -> String {
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw Malformed() }
            index += 1
            var out: [UInt8] = []
            while true {
                guard index < bytes.count else { throw Malformed() }
                let byte = bytes[index]
                index += 1
                if byte == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
                guard byte == UInt8(ascii: "\\") else {
                    out.append(byte)
                    continue
                }
                guard index < bytes.count else { throw Malformed() }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800..<0xDC00).contains(code) {
                        guard bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else { throw Malformed() }
                        index += 2
                        let low = try hex4()
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let scalar = Unicode.Scalar(code) else { throw Malformed() }
                    UTF8.encode(scalar) { out.append($0) }
                default: out.append(escape)
                }
            }
        }

        mutating func hex4() throws -> UInt32 {
            guard index + 4 <= bytes.count, let code = UInt32(String(decoding: bytes[index..<index + 4], as: UTF8.self), radix: 16) else {
                throw Malformed()
            }
            index += 4
            return code
        }
    }
}
