// A small TOML reader of our own: the core depends on the standard library only, and every value
// must remember its line so that configuration errors can name file, line and key.
//
// Supported: TOML 1.0 tables, dotted and quoted keys, basic/literal strings (single- and
// multi-line) with all escapes, integers (decimal with `_`, hex, octal, binary), floats (incl.
// inf/nan), booleans, arrays (multi-line, trailing comma), inline tables (also over several lines
// with a trailing comma, as TOML 1.1 allows) and comments. Not supported, with a clear error:
// arrays of tables (`[[x]]`) and dates/times — the configuration uses neither.
//
// Hostile input: the input must be valid UTF-8 (checked first, the error names the line of the
// first bad byte); nesting is limited to `TOMLLimits.nestingDepth` levels, so neither the parser
// nor the value tree (whose deinit and `==` recurse) goes deeper; the time is linear in the input.
// Keys are compared by code points, as TOML says, not by Swift's canonical equivalence.

/// Limits the parser enforces on hostile input.
public enum TOMLLimits {
    /// How deep values may nest: every table level, dotted-key part, array and inline table counts
    /// one (`[worker.a]` then `environment.X = "1"` is 4). Recursion in the parser and in the value
    /// tree is bounded by it; bgworker's configuration needs 4.
    public static let nestingDepth = 128
}

/// A parsed TOML value with the line on which it starts (1-based).
public struct TOMLValue: Sendable, Equatable {
    public indirect enum Kind: Sendable, Equatable {
        case string(String)
        case integer(Int64)
        case float(Double)
        case boolean(Bool)
        case array([TOMLValue])
        case table(TOMLTable)

        /// Strings by code points (TOML's rule), not by canonical equivalence.
        public static func == (lhs: Kind, rhs: Kind) -> Bool {
            switch (lhs, rhs) {
            case (.string(let a), .string(let b)): a.utf8.elementsEqual(b.utf8)
            case (.integer(let a), .integer(let b)): a == b
            case (.float(let a), .float(let b)): a == b
            case (.boolean(let a), .boolean(let b)): a == b
            case (.array(let a), .array(let b)): a == b
            case (.table(let a), .table(let b)): a == b
            default: false
            }
        }
    }

    public var kind: Kind
    public var line: Int

    public init(_ kind: Kind, line: Int) {
        self.kind = kind
        self.line = line
    }

    /// A short name of the value's type, for error messages ("a string", "an integer", ...).
    public var typeDescription: String {
        switch kind {
        case .string: "a string"
        case .integer: "an integer"
        case .float: "a float"
        case .boolean: "a boolean"
        case .array: "an array"
        case .table: "a table"
        }
    }
}

/// A key compared and hashed by its code points (UTF-8 bytes): TOML keys `"\u00e9"` and
/// `"e\u0301"` are different keys, although Swift's `String ==` finds them equal.
struct TOMLKey: Hashable, Sendable {
    let text: String

    init(_ text: String) { self.text = text }

    static func == (lhs: TOMLKey, rhs: TOMLKey) -> Bool { lhs.text.utf8.elementsEqual(rhs.text.utf8) }

    func hash(into hasher: inout Hasher) {
        hasher.combine(text.utf8.count)
        for byte in text.utf8 { hasher.combine(byte) }
    }
}

/// A TOML table: its keys in document order, each with its value (and that value's line).
public struct TOMLTable: Sendable, Equatable {
    /// The line of the table's header, its first dotted key, or its opening brace.
    public var line: Int
    /// Keys in the order they were first written.
    public private(set) var keys: [String] = []
    private var values: [TOMLKey: TOMLValue] = [:]

    public init(line: Int) {
        self.line = line
    }

    /// The value at `key`, matched by code points.
    public subscript(key: String) -> TOMLValue? {
        values[TOMLKey(key)]
    }

    /// Key/value pairs in document order.
    public var entries: [(key: String, value: TOMLValue)] {
        keys.compactMap { key in values[TOMLKey(key)].map { (key, $0) } }
    }

    mutating func set(_ key: String, _ value: TOMLValue) {
        if values.updateValue(value, forKey: TOMLKey(key)) == nil {
            keys.append(key)
        }
    }

    public static func == (lhs: TOMLTable, rhs: TOMLTable) -> Bool {
        lhs.line == rhs.line && lhs.keys.map(TOMLKey.init) == rhs.keys.map(TOMLKey.init) && lhs.values == rhs.values
    }
}

/// A TOML syntax error: the line and what is wrong.
public struct TOMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var message: String

    public var description: String { "line \(line): \(message)" }
}

/// Parses a TOML document into its root table.
public func parseTOML(_ text: String) throws(TOMLError) -> TOMLTable {
    var parser = TOMLParser(Array(text.utf8))
    return try parser.parseDocument()
}

/// Parses a TOML document given as bytes, as read from a file: invalid UTF-8 is an error naming
/// the line of the first bad byte (a `String` would have replaced it with U+FFFD already).
public func parseTOML(utf8 bytes: [UInt8]) throws(TOMLError) -> TOMLTable {
    var parser = TOMLParser(bytes)
    return try parser.parseDocument()
}

// MARK: - Building the tree

/// Mutable tree used while parsing: TOML's rules about redefinition depend on how a table came to
/// exist (a header, an intermediate header segment, a dotted key, an inline table). Inline tables
/// are nodes too, frozen once with the document (or with the array holding them), so that nested
/// inline tables cost linear time.
private final class TableNode {
    enum Origin { case header, implicit, dotted, inline }
    enum Child {
        case table(TableNode)
        case value(TOMLValue)
    }

    /// Becomes the header's line when a table first created implicitly is defined explicitly.
    var line: Int
    var origin: Origin
    var order: [String] = []
    var children: [TOMLKey: Child] = [:]

    init(line: Int, origin: Origin) {
        self.line = line
        self.origin = origin
    }

    subscript(key: String) -> Child? { children[TOMLKey(key)] }

    func insert(_ key: String, _ child: Child) {
        if children.updateValue(child, forKey: TOMLKey(key)) == nil {
            order.append(key)
        }
    }

    /// Recursion is bounded by the nesting limit, which the parser enforces while building.
    func freeze() -> TOMLTable {
        var table = TOMLTable(line: line)
        for key in order {
            switch children[TOMLKey(key)] {
            case .table(let node): table.set(key, TOMLValue(.table(node.freeze()), line: node.line))
            case .value(let value): table.set(key, value)
            case nil: break
            }
        }
        return table
    }
}
private func lineOf(_ child: TableNode.Child) -> Int {
    switch child {
    case .table(let node): node.line
    case .value(let value): value.line
    }
}

private func render(_ path: [String]) -> String {
    path.map { key in
        key.utf8.allSatisfy(isBareKeyByte) && !key.isEmpty ? key : "\"" + escapeForDisplay(key) + "\""
    }.joined(separator: ".")
}

private func escapeForDisplay(_ key: String) -> String {
    var out = ""
    for ch in key.unicodeScalars {
        switch ch {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        case "\u{00}"..."\u{1F}", "\u{7F}": out += "\\u00" + hex(UInt8(ch.value))
        default: out.unicodeScalars.append(ch)
        }
    }
    return out
}

private func isBareKeyByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
        true
    default:
        false
    }
}

// MARK: - The parser

private struct TOMLParser {
    private let bytes: [UInt8]
    private var index = 0
    private var line = 1

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    // MARK: Document structure

    mutating func parseDocument() throws(TOMLError) -> TOMLTable {
        try validateUTF8()
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
        let root = TableNode(line: 1, origin: .header)
        var current = root
        var currentDepth = 0
        while true {
            skipWhitespace()
            guard let byte = peek() else { break }
            switch byte {
            case UInt8(ascii: "#"), UInt8(ascii: "\n"), UInt8(ascii: "\r"):
                try endOfLine()
            case UInt8(ascii: "["):
                (current, currentDepth) = try parseHeader(root: root)
                try endOfLine()
            default:
                try parseKeyValue(into: current, depth: currentDepth)
                try endOfLine()
            }
        }
        return root.freeze()
    }

    /// Refuses anything but UTF-8 before parsing, naming the line of the first bad byte.
    private func validateUTF8() throws(TOMLError) {
        guard let bad = firstInvalidUTF8(bytes) else { return }
        var badLine = 1
        for byte in bytes[..<bad] where byte == UInt8(ascii: "\n") { badLine += 1 }
        throw TOMLError(line: badLine, message: "invalid UTF-8 (byte 0x\(hex(bytes[bad]))): the file must be UTF-8")
    }

    private mutating func parseHeader(root: TableNode) throws(TOMLError) -> (TableNode, Int) {
        let headerLine = line
        advance()  // [
        if peek() == UInt8(ascii: "[") {
            throw fail("arrays of tables ([[...]]) are not used in bgworker's configuration")
        }
        skipWhitespace()
        let path = try parseKeyPath(depth: 0)
        skipWhitespace()
        guard peek() == UInt8(ascii: "]") else { throw fail("expected ']' to close the table header") }
        advance()

        var node = root
        for (position, key) in path.enumerated() {
            let isLast = position == path.count - 1
            switch node[key] {
            case nil:
                let created = TableNode(line: headerLine, origin: isLast ? .header : .implicit)
                node.insert(key, .table(created))
                node = created
            case .value(let value):
                throw TOMLError(
                    line: headerLine,
                    message: "'\(render(Array(path[...position])))' is already a value (line \(value.line)), not a table")
            case .table(let existing):
                if existing.origin == .inline {
                    throw TOMLError(
                        line: headerLine,
                        message: "inline table '\(render(Array(path[...position])))' (line \(existing.line)) cannot be extended")
                }
                if isLast {
                    guard existing.origin == .implicit else {
                        throw TOMLError(
                            line: headerLine,
                            message: "table [\(render(path))] is already defined (line \(existing.line))")
                    }
                    existing.origin = .header
                    existing.line = headerLine
                }
                node = existing
            }
        }
        return (node, path.count)
    }

    /// A `key = value` pair into `table`, which is `depth` levels below the root.
    private mutating func parseKeyValue(into table: TableNode, depth: Int) throws(TOMLError) {
        let keyLine = line
        let path = try parseKeyPath(depth: depth)
        skipWhitespace()
        guard peek() == UInt8(ascii: "=") else {
            throw fail("expected '=' after key '\(render(path))'")
        }
        advance()
        skipWhitespace()
        let value = try parseValue(depth: depth + path.count)
        try insert(value, at: path, into: table, line: keyLine)
    }

    /// Inserts `value` at a (possibly dotted) key path below `table`, creating dotted tables.
    private func insert(_ value: TableNode.Child, at path: [String], into table: TableNode, line keyLine: Int)
        throws(TOMLError)
    {
        var node = table
        for (position, key) in path.dropLast().enumerated() {
            switch node[key] {
            case nil:
                let created = TableNode(line: keyLine, origin: .dotted)
                node.insert(key, .table(created))
                node = created
            case .value(let existing):
                throw TOMLError(
                    line: keyLine,
                    message: "'\(render(Array(path[...position])))' is already a value (line \(existing.line)), not a table")
            case .table(let existing):
                guard existing.origin == .dotted else {
                    throw TOMLError(
                        line: keyLine,
                        message: "cannot add keys to table '\(render(Array(path[...position])))' (line \(existing.line)) with a dotted key")
                }
                node = existing
            }
        }
        let last = path[path.count - 1]
        if let existing = node[last] {
            throw TOMLError(
                line: keyLine, message: "duplicate key '\(render(path))' (first defined on line \(lineOf(existing)))")
        }
        node.insert(last, value)
    }

    private func tooDeep() -> TOMLError {
        fail(
            "nested too deeply: more than \(TOMLLimits.nestingDepth) levels of tables, dotted keys, arrays and "
                + "inline tables (bgworker's limit)")
    }

    // MARK: Keys

    /// A dotted key whose first part is `depth + 1` levels below the root: refused as soon as it
    /// would go past the nesting limit.
    private mutating func parseKeyPath(depth: Int) throws(TOMLError) -> [String] {
        var path = [try parseSimpleKey()]
        while true {
            if depth + path.count > TOMLLimits.nestingDepth { throw tooDeep() }
            let save = (index, line)
            skipWhitespace()
            guard peek() == UInt8(ascii: ".") else {
                (index, line) = save
                return path
            }
            advance()
            skipWhitespace()
            path.append(try parseSimpleKey())
        }
    }

    private mutating func parseSimpleKey() throws(TOMLError) -> String {
        switch peek() {
        case UInt8(ascii: "\""):
            if peek(offset: 1) == UInt8(ascii: "\""), peek(offset: 2) == UInt8(ascii: "\"") {
                throw fail("a key cannot be a multi-line string")
            }
            return try parseBasicString()
        case UInt8(ascii: "'"):
            if peek(offset: 1) == UInt8(ascii: "'"), peek(offset: 2) == UInt8(ascii: "'") {
                throw fail("a key cannot be a multi-line string")
            }
            return try parseLiteralString()
        default:
            let start = index
            while let byte = peek(), isBareKeyByte(byte) { advance() }
            guard index > start else {
                throw fail("expected a key, found \(describeCurrent())")
            }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }
    }

    // MARK: Values

    /// A value `depth` levels below the root (its key's level); arrays and inline tables go one
    /// level deeper, which bounds this recursion.
    private mutating func parseValue(depth: Int) throws(TOMLError) -> TableNode.Child {
        let valueLine = line
        guard let byte = peek() else { throw fail("expected a value, found the end of the file") }
        switch byte {
        case UInt8(ascii: "\""):
            if peek(offset: 1) == UInt8(ascii: "\""), peek(offset: 2) == UInt8(ascii: "\"") {
                return .value(TOMLValue(.string(try parseMultilineBasicString()), line: valueLine))
            }
            return .value(TOMLValue(.string(try parseBasicString()), line: valueLine))
        case UInt8(ascii: "'"):
            if peek(offset: 1) == UInt8(ascii: "'"), peek(offset: 2) == UInt8(ascii: "'") {
                return .value(TOMLValue(.string(try parseMultilineLiteralString()), line: valueLine))
            }
            return .value(TOMLValue(.string(try parseLiteralString()), line: valueLine))
        case UInt8(ascii: "["):
            if depth >= TOMLLimits.nestingDepth { throw tooDeep() }
            return .value(TOMLValue(.array(try parseArray(depth: depth)), line: valueLine))
        case UInt8(ascii: "{"):
            if depth >= TOMLLimits.nestingDepth { throw tooDeep() }
            return .table(try parseInlineTable(depth: depth))
        case UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "#"):
            throw fail("expected a value")
        default:
            return .value(TOMLValue(try parseScalarToken(), line: valueLine))
        }
    }

    private mutating func parseArray(depth: Int) throws(TOMLError) -> [TOMLValue] {
        let openLine = line
        advance()  // [
        var elements: [TOMLValue] = []
        while true {
            try skipWhitespaceNewlinesAndComments(unterminated: "array opened on line \(openLine)")
            if peek() == UInt8(ascii: "]") {
                advance()
                return elements
            }
            switch try parseValue(depth: depth + 1) {
            case .value(let value): elements.append(value)
            case .table(let node): elements.append(TOMLValue(.table(node.freeze()), line: node.line))
            }
            try skipWhitespaceNewlinesAndComments(unterminated: "array opened on line \(openLine)")
            switch peek() {
            case UInt8(ascii: ","):
                advance()
            case UInt8(ascii: "]"):
                advance()
                return elements
            default:
                throw fail("expected ',' or ']' in array, found \(describeCurrent())")
            }
        }
    }

    /// An inline table `depth` levels below the root; its keys are one level deeper or more.
    private mutating func parseInlineTable(depth: Int) throws(TOMLError) -> TableNode {
        let openLine = line
        advance()  // {
        let node = TableNode(line: openLine, origin: .inline)
        while true {
            try skipWhitespaceNewlinesAndComments(unterminated: "inline table opened on line \(openLine)")
            if peek() == UInt8(ascii: "}") {
                advance()
                return node
            }
            try parseKeyValue(into: node, depth: depth)
            try skipWhitespaceNewlinesAndComments(unterminated: "inline table opened on line \(openLine)")
            switch peek() {
            case UInt8(ascii: ","):
                advance()
            case UInt8(ascii: "}"):
                advance()
                return node
            default:
                throw fail("expected ',' or '}' in inline table, found \(describeCurrent())")
            }
        }
    }

    /// Booleans, integers, floats; recognises dates only to reject them clearly.
    private mutating func parseScalarToken() throws(TOMLError) -> TOMLValue.Kind {
        let start = index
        while let byte = peek(), isTokenByte(byte) { advance() }
        let token = String(decoding: bytes[start..<index], as: UTF8.self)
        if token.isEmpty { throw fail("expected a value, found \(describeCurrent())") }
        if token == "true" { return .boolean(true) }
        if token == "false" { return .boolean(false) }
        if let kind = try number(token) { return kind }
        if looksLikeDate(token) { throw fail("dates and times are not used in bgworker's configuration ('\(token)')") }
        throw fail("invalid value '\(token)' (strings must be quoted)")
    }

    private func number(_ token: String) throws(TOMLError) -> TOMLValue.Kind? {
        var body = Substring(token)
        var sign = ""
        if let first = body.first, first == "+" || first == "-" {
            sign = first == "-" ? "-" : ""
            body = body.dropFirst()
        }
        switch body {
        case "inf": return .float(sign == "-" ? -.infinity : .infinity)
        case "nan": return .float(.nan)
        default: break
        }
        if body.hasPrefix("0x") || body.hasPrefix("0o") || body.hasPrefix("0b") {
            guard sign.isEmpty, token.first != "+" else { throw fail("'\(token)': a sign is not allowed on hex, octal or binary integers") }
            let radix = body.hasPrefix("0x") ? 16 : body.hasPrefix("0o") ? 8 : 2
            let digits = body.dropFirst(2)
            guard let cleaned = withoutUnderscores(digits), let value = Int64(cleaned, radix: radix) else {
                throw fail("invalid integer '\(token)'")
            }
            return .integer(value)
        }
        guard let firstChar = body.first, firstChar.isASCII, firstChar.isNumber else { return nil }
        // Split into integer part, fraction and exponent, validating underscores in each.
        let isFloat = body.contains(".") || body.contains("e") || body.contains("E")
        var mantissa = body
        var exponent: Substring? = nil
        if let e = body.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            mantissa = body[..<e]
            exponent = body[body.index(after: e)...]
        }
        var integerPart = mantissa
        var fraction: Substring? = nil
        if let dot = mantissa.firstIndex(of: ".") {
            integerPart = mantissa[..<dot]
            fraction = mantissa[mantissa.index(after: dot)...]
        }
        guard let intDigits = withoutUnderscores(integerPart), !intDigits.isEmpty else {
            if looksLikeDate(token) { return nil }
            throw fail("invalid number '\(token)'")
        }
        if intDigits.count > 1, intDigits.first == "0" {
            if looksLikeDate(token) { return nil }
            throw fail("invalid number '\(token)': leading zeros are not allowed")
        }
        if !isFloat {
            guard let value = Int64(sign + intDigits) else {
                if looksLikeDate(token) { return nil }
                throw fail("integer '\(token)' is out of range or invalid")
            }
            return .integer(value)
        }
        var text = sign + intDigits
        if let fraction {
            guard let digits = withoutUnderscores(fraction), !digits.isEmpty else {
                throw fail("invalid float '\(token)': expected digits after '.'")
            }
            text += "." + digits
        }
        if var exponent {
            var expSign = ""
            if let first = exponent.first, first == "+" || first == "-" {
                expSign = String(first)
                exponent = exponent.dropFirst()
            }
            guard let digits = withoutUnderscores(exponent), !digits.isEmpty else {
                throw fail("invalid float '\(token)': expected digits in the exponent")
            }
            text += "e" + expSign + digits
        }
        guard let value = Double(text) else { throw fail("invalid float '\(token)'") }
        return .float(value)
    }

    /// Digits with single underscores between them, or nil when an underscore is misplaced or a
    /// non-alphanumeric character appears.
    private func withoutUnderscores(_ text: Substring) -> String? {
        var out = ""
        var previousWasDigit = false
        for ch in text {
            if ch == "_" {
                guard previousWasDigit else { return nil }
                previousWasDigit = false
            } else {
                guard ch.isASCII, ch.isLetter || ch.isNumber else { return nil }
                out.append(ch)
                previousWasDigit = true
            }
        }
        if !text.isEmpty, !previousWasDigit { return nil }
        return out
    }

    private func looksLikeDate(_ token: String) -> Bool {
        let chars = Array(token.utf8)
        if chars.count >= 5, chars[0..<4].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), chars[4] == UInt8(ascii: "-") {
            return true
        }
        return chars.count >= 3 && chars[0..<2].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) && chars[2] == UInt8(ascii: ":")
    }

    private func isTokenByte(_ byte: UInt8) -> Bool {
        isBareKeyByte(byte) || byte == UInt8(ascii: "+") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: ":")
    }

    // MARK: Strings
    // The input is valid UTF-8 (checked first), so bytes are copied as they are and decoded once:
    // the time is linear whatever the mix of escapes and text.

    private mutating func parseBasicString() throws(TOMLError) -> String {
        advance()  // "
        var out: [UInt8] = []
        while true {
            guard let byte = peek() else { throw fail("unterminated string") }
            switch byte {
            case UInt8(ascii: "\""):
                advance()
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                UTF8.encode(try parseEscape()) { out.append($0) }
            case UInt8(ascii: "\n"), UInt8(ascii: "\r"):
                throw fail("unterminated string (a newline is not allowed in a single-line string)")
            default:
                if isForbiddenControl(byte) { throw fail("control character U+\(hex(byte)) must be escaped in a string") }
                out.append(byte)
                advance()
            }
        }
    }

    private mutating func parseMultilineBasicString() throws(TOMLError) -> String {
        let openLine = line
        advance(3)
        skipOneNewline()
        var out: [UInt8] = []
        while true {
            guard let byte = peek() else { throw TOMLError(line: openLine, message: "unterminated multi-line string") }
            if byte == UInt8(ascii: "\""), peek(offset: 1) == UInt8(ascii: "\""), peek(offset: 2) == UInt8(ascii: "\"") {
                // Up to two quotes right before the closing delimiter belong to the content.
                var extra = 0
                while extra < 2, peek(offset: 3 + extra) == UInt8(ascii: "\"") { extra += 1 }
                out.append(contentsOf: repeatElement(UInt8(ascii: "\""), count: extra))
                advance(3 + extra)
                return String(decoding: out, as: UTF8.self)
            }
            if byte == UInt8(ascii: "\\") {
                // A line-ending backslash trims the newline and all whitespace after it; a CR
                // counts only as part of CRLF (a bare CR is a control character).
                var probe = 1
                while let next = peek(offset: probe), next == UInt8(ascii: " ") || next == UInt8(ascii: "\t") { probe += 1 }
                if isNewline(at: probe) {
                    advance(probe)
                    while let next = peek() {
                        if next == UInt8(ascii: " ") || next == UInt8(ascii: "\t") {
                            advance()
                        } else if isNewline(at: 0) {
                            skipOneNewline()
                        } else {
                            break
                        }
                    }
                    continue
                }
                if peek(offset: probe) == UInt8(ascii: "\r") {
                    advance(probe)
                    throw fail("a carriage return (CR) must be followed by a line feed")
                }
                UTF8.encode(try parseEscape()) { out.append($0) }
                continue
            }
            if byte == UInt8(ascii: "\r"), peek(offset: 1) == UInt8(ascii: "\n") {
                out.append(UInt8(ascii: "\n"))
                advance(2)
                continue
            }
            if byte != UInt8(ascii: "\n"), isForbiddenControl(byte) {
                throw fail("control character U+\(hex(byte)) must be escaped in a string")
            }
            out.append(byte)
            advance()
        }
    }

    private mutating func parseLiteralString() throws(TOMLError) -> String {
        advance()  // '
        let start = index
        while true {
            guard let byte = peek() else { throw fail("unterminated string") }
            if byte == UInt8(ascii: "'") {
                let text = String(decoding: bytes[start..<index], as: UTF8.self)
                advance()
                return text
            }
            if byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                throw fail("unterminated string (a newline is not allowed in a single-line string)")
            }
            if isForbiddenControl(byte) { throw fail("control character U+\(hex(byte)) is not allowed in a literal string") }
            advance()
        }
    }

    private mutating func parseMultilineLiteralString() throws(TOMLError) -> String {
        let openLine = line
        advance(3)
        skipOneNewline()
        var out: [UInt8] = []
        while true {
            guard let byte = peek() else { throw TOMLError(line: openLine, message: "unterminated multi-line string") }
            if byte == UInt8(ascii: "'"), peek(offset: 1) == UInt8(ascii: "'"), peek(offset: 2) == UInt8(ascii: "'") {
                var extra = 0
                while extra < 2, peek(offset: 3 + extra) == UInt8(ascii: "'") { extra += 1 }
                out.append(contentsOf: repeatElement(UInt8(ascii: "'"), count: extra))
                advance(3 + extra)
                return String(decoding: out, as: UTF8.self)
            }
            if byte == UInt8(ascii: "\r"), peek(offset: 1) == UInt8(ascii: "\n") {
                out.append(UInt8(ascii: "\n"))
                advance(2)
                continue
            }
            if byte != UInt8(ascii: "\n"), isForbiddenControl(byte) {
                throw fail("control character U+\(hex(byte)) is not allowed in a literal string")
            }
            out.append(byte)
            advance()
        }
    }

    private mutating func parseEscape() throws(TOMLError) -> Unicode.Scalar {
        let escapeLine = line
        advance()  // backslash
        guard let byte = peek() else { throw fail("unterminated string") }
        advance()
        switch byte {
        case UInt8(ascii: "b"): return "\u{08}"
        case UInt8(ascii: "t"): return "\t"
        case UInt8(ascii: "n"): return "\n"
        case UInt8(ascii: "f"): return "\u{0C}"
        case UInt8(ascii: "r"): return "\r"
        case UInt8(ascii: "e"): return "\u{1B}"
        case UInt8(ascii: "\""): return "\""
        case UInt8(ascii: "\\"): return "\\"
        case UInt8(ascii: "u"), UInt8(ascii: "U"):
            let count = byte == UInt8(ascii: "u") ? 4 : 8
            guard index + count <= bytes.count else { throw fail("incomplete unicode escape") }
            let digits = String(decoding: bytes[index..<index + count], as: UTF8.self)
            guard digits.utf8.allSatisfy({ isHexDigit($0) }), let code = UInt32(digits, radix: 16),
                let scalar = Unicode.Scalar(code)
            else {
                throw fail("invalid unicode escape '\\\(Character(Unicode.Scalar(byte)))\(digits)'")
            }
            advance(count)
            return scalar
        case 0x21...0x7E:
            throw TOMLError(line: escapeLine, message: "invalid escape '\\\(Character(Unicode.Scalar(byte)))' in string")
        default:
            throw TOMLError(line: escapeLine, message: "invalid escape in string: a backslash followed by byte 0x\(hex(byte))")
        }
    }

    // MARK: Low level

    private func peek(offset: Int = 0) -> UInt8? {
        index + offset < bytes.count ? bytes[index + offset] : nil
    }

    /// LF or CRLF at `offset`.
    private func isNewline(at offset: Int) -> Bool {
        peek(offset: offset) == UInt8(ascii: "\n")
            || (peek(offset: offset) == UInt8(ascii: "\r") && peek(offset: offset + 1) == UInt8(ascii: "\n"))
    }

    private mutating func advance(_ count: Int = 1) {
        for _ in 0..<count where index < bytes.count {
            if bytes[index] == UInt8(ascii: "\n") { line += 1 }
            index += 1
        }
    }

    private mutating func skipWhitespace() {
        while let byte = peek(), byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { advance() }
    }

    private mutating func skipOneNewline() {
        if peek() == UInt8(ascii: "\n") {
            advance()
        } else if peek() == UInt8(ascii: "\r"), peek(offset: 1) == UInt8(ascii: "\n") {
            advance(2)
        }
    }

    private mutating func skipComment() throws(TOMLError) {
        guard peek() == UInt8(ascii: "#") else { return }
        while let byte = peek(), byte != UInt8(ascii: "\n") {
            if byte == UInt8(ascii: "\r"), peek(offset: 1) == UInt8(ascii: "\n") { break }
            if isForbiddenControl(byte) { throw fail("control character U+\(hex(byte)) in a comment") }
            advance()
        }
    }

    /// After a key/value pair or a header: optional whitespace and comment, then a newline or EOF.
    private mutating func endOfLine() throws(TOMLError) {
        skipWhitespace()
        try skipComment()
        guard peek() != nil else { return }
        guard isNewline(at: 0) else { throw fail("expected the end of the line, found \(describeCurrent())") }
        skipOneNewline()
    }

    private mutating func skipWhitespaceNewlinesAndComments(unterminated what: String) throws(TOMLError) {
        while true {
            skipWhitespace()
            try skipComment()
            guard peek() != nil else { throw fail("unterminated \(what)") }
            guard isNewline(at: 0) else { return }
            skipOneNewline()
        }
    }

    private func describeCurrent() -> String {
        guard let byte = peek() else { return "the end of the file" }
        switch byte {
        case UInt8(ascii: "\r") where peek(offset: 1) != UInt8(ascii: "\n"):
            return "a carriage return (CR) without a line feed after it"
        case UInt8(ascii: "\n"), UInt8(ascii: "\r"): return "the end of the line"
        case 0x21...0x7E: return "'\(Character(Unicode.Scalar(byte)))'"
        default: return "byte 0x\(hex(byte))"
        }
    }

    private func fail(_ message: String) -> TOMLError {
        TOMLError(line: line, message: message)
    }
}

/// The offset of the first byte that does not belong to well-formed UTF-8 (no overlong forms, no
/// surrogates, nothing above U+10FFFF), or nil.
func firstInvalidUTF8(_ bytes: [UInt8]) -> Int? {
    var i = 0
    while i < bytes.count {
        let lead = bytes[i]
        if lead < 0x80 {
            i += 1
            continue
        }
        let length: Int
        var secondRange: ClosedRange<UInt8> = 0x80...0xBF
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; secondRange = 0xA0...0xBF
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; secondRange = 0x80...0x9F
        case 0xF0: length = 4; secondRange = 0x90...0xBF
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; secondRange = 0x80...0x8F
        default: return i
        }
        guard i + length <= bytes.count else { return i }
        guard secondRange.contains(bytes[i + 1]) else { return i + 1 }
        for k in 2..<length where !(0x80...0xBF).contains(bytes[i + k]) { return i + k }
        i += length
    }
    return nil
}

private func isForbiddenControl(_ byte: UInt8) -> Bool {
    (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7F
}

private func isHexDigit(_ byte: UInt8) -> Bool {
    (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x46) || (byte >= 0x61 && byte <= 0x66)
}

private func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789ABCDEF")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
}
