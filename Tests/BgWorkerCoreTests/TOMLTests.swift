import Testing

@testable import BgWorkerCore

private func parse(_ text: String) throws -> TOMLTable {
    try parseTOML(text)
}

private func kind(_ table: TOMLTable, _ path: String...) -> TOMLValue.Kind? {
    var current = table
    for key in path.dropLast() {
        guard case .table(let inner)? = current[key]?.kind else { return nil }
        current = inner
    }
    return current[path[path.count - 1]]?.kind
}

private func failure(_ text: String) -> TOMLError? {
    do {
        _ = try parseTOML(text)
        return nil
    } catch {
        return error
    }
}

@Suite struct TOMLScalarTests {
    @Test func strings() throws {
        let doc = try parse(
            #"""
            a = "plain"
            b = "tab\there \"q\" back\\slash \u00e9 \U0001F600"
            c = 'C:\no\escapes'
            d = ""
            e = "\b\f\n\r\e"
            """#)
        #expect(kind(doc, "a") == .string("plain"))
        #expect(kind(doc, "b") == .string("tab\there \"q\" back\\slash é 😀"))
        #expect(kind(doc, "c") == .string(#"C:\no\escapes"#))
        #expect(kind(doc, "d") == .string(""))
        #expect(kind(doc, "e") == .string("\u{08}\u{0C}\n\r\u{1B}"))
    }

    @Test func multilineStrings() throws {
        let doc = try parse(
            "a = \"\"\"\nline1\nline2\"\"\"\n"
                + "b = \"\"\"one \\\n    two\"\"\"\n"
                + "c = '''\nraw \\n\n'''\n"
                + "d = \"\"\"q\"\"\"\"\"\n"
                + "e = '''x'''''\n"
                + "f = 1\n")
        #expect(kind(doc, "a") == .string("line1\nline2"))
        #expect(kind(doc, "b") == .string("one two"))
        #expect(kind(doc, "c") == .string("raw \\n\n"))
        #expect(kind(doc, "d") == .string("q\"\""))
        #expect(kind(doc, "e") == .string("x''"))
        #expect(doc["f"]?.line == 11)
    }

    @Test func numbersAndBooleans() throws {
        let doc = try parse(
            """
            i = 42
            n = -17
            p = +3
            u = 1_000_000
            h = 0xDEAD_beef
            o = 0o755
            b = 0b1010
            f = 3.25
            g = -1e3
            k = 6.5E-2
            j = 1_0.0_5
            inf1 = inf
            inf2 = -inf
            nan1 = nan
            t = true
            z = false
            zero = 0
            """)
        #expect(kind(doc, "i") == .integer(42))
        #expect(kind(doc, "n") == .integer(-17))
        #expect(kind(doc, "p") == .integer(3))
        #expect(kind(doc, "u") == .integer(1_000_000))
        #expect(kind(doc, "h") == .integer(0xDEAD_BEEF))
        #expect(kind(doc, "o") == .integer(0o755))
        #expect(kind(doc, "b") == .integer(10))
        #expect(kind(doc, "f") == .float(3.25))
        #expect(kind(doc, "g") == .float(-1000))
        #expect(kind(doc, "k") == .float(0.065))
        #expect(kind(doc, "j") == .float(10.05))
        #expect(kind(doc, "inf1") == .float(.infinity))
        #expect(kind(doc, "inf2") == .float(-.infinity))
        if case .float(let value)? = kind(doc, "nan1") { #expect(value.isNaN) } else { Issue.record("nan") }
        #expect(kind(doc, "t") == .boolean(true))
        #expect(kind(doc, "z") == .boolean(false))
        #expect(kind(doc, "zero") == .integer(0))
    }

    @Test func arraysAndInlineTables() throws {
        let doc = try parse(
            """
            a = [1, 2, 3]
            b = [
              "x",   # comment
              "y",
            ]
            c = []
            d = [[1, 2], ["a"]]
            e = { A = "1", "B C" = "2", nested.key = true }
            f = {}
            g = {
              x = 1,
              y = 2,
            }
            """)
        #expect(kind(doc, "a") == .array([TOMLValue(.integer(1), line: 1), TOMLValue(.integer(2), line: 1), TOMLValue(.integer(3), line: 1)]))
        #expect(kind(doc, "b") == .array([TOMLValue(.string("x"), line: 3), TOMLValue(.string("y"), line: 4)]))
        #expect(kind(doc, "c") == .array([]))
        #expect(kind(doc, "e", "A") == .string("1"))
        #expect(kind(doc, "e", "B C") == .string("2"))
        #expect(kind(doc, "e", "nested", "key") == .boolean(true))
        #expect(kind(doc, "g", "y") == .integer(2))
        #expect(doc["g"]?.line == 10)
        if case .array(let inner)? = kind(doc, "d") { #expect(inner.count == 2) } else { Issue.record("d") }
    }
}

@Suite struct TOMLStructureTests {
    @Test func tablesDottedAndQuotedKeys() throws {
        let doc = try parse(
            """
            # comment
            top = 1

            [daemon]
            log-level = "info" # trailing comment

            [worker.dice]
            exec = ["/bin/true"]

            [worker."db.sync"]
            a.b.c = 1
            "quoted key" = 2
            'lit' = 3

            [ worker . spaced ]
            x = 1
            """)
        #expect(kind(doc, "top") == .integer(1))
        #expect(kind(doc, "daemon", "log-level") == .string("info"))
        #expect(kind(doc, "worker", "db.sync", "a", "b", "c") == .integer(1))
        #expect(kind(doc, "worker", "db.sync", "quoted key") == .integer(2))
        #expect(kind(doc, "worker", "db.sync", "lit") == .integer(3))
        #expect(kind(doc, "worker", "spaced", "x") == .integer(1))
        guard case .table(let workers)? = kind(doc, "worker") else { Issue.record("worker"); return }
        #expect(workers.keys == ["dice", "db.sync", "spaced"])
        #expect(workers["dice"]?.line == 7)
        #expect(workers["db.sync"]?.line == 10)
        guard case .table(let dice)? = workers["dice"]?.kind else { return }
        #expect(dice["exec"]?.line == 8)
    }

    @Test func implicitTableMayBeDefinedLater() throws {
        let doc = try parse("[a.b]\nx = 1\n[a]\ny = 2\n")
        #expect(kind(doc, "a", "b", "x") == .integer(1))
        #expect(kind(doc, "a", "y") == .integer(2))
    }

    @Test func crlfAndBOM() throws {
        let doc = try parse("\u{FEFF}a = 1\r\nb = \"x\"\r\n")
        #expect(kind(doc, "b") == .string("x"))
        #expect(doc["b"]?.line == 2)
    }
}

@Suite struct TOMLErrorTests {
    @Test(arguments: [
        ("a = 1\na = 2", 2, "duplicate key 'a' (first defined on line 1)"),
        ("[t]\nx=1\n[t]\n", 3, "table [t] is already defined (line 1)"),
        ("a = \"unterminated\nb = 1", 1, "unterminated string (a newline is not allowed in a single-line string)"),
        ("a = 1 2", 1, "expected the end of the line, found '2'"),
        ("a = ", 1, "expected a value, found the end of the file"),
        ("a =\nb = 1", 1, "expected a value"),
        ("= 1", 1, "expected a key, found '='"),
        ("a b = 1", 1, "expected '=' after key 'a'"),
        ("x = 1\n[[arr]]\n", 2, "arrays of tables ([[...]]) are not used in bgworker's configuration"),
        ("d = 1979-05-27", 1, "dates and times are not used in bgworker's configuration ('1979-05-27')"),
        ("t = 07:32:00", 1, "dates and times are not used in bgworker's configuration ('07:32:00')"),
        ("s = bare", 1, "invalid value 'bare' (strings must be quoted)"),
        ("n = 01", 1, "invalid number '01': leading zeros are not allowed"),
        ("n = 1__0", 1, "invalid number '1__0'"),
        ("n = _1", 1, "invalid value '_1' (strings must be quoted)"),
        ("n = 1_", 1, "invalid number '1_'"),
        ("n = 99999999999999999999", 1, "integer '99999999999999999999' is out of range or invalid"),
        ("n = 1.", 1, "invalid float '1.': expected digits after '.'"),
        ("n = 1e", 1, "invalid float '1e': expected digits in the exponent"),
        ("n = 0xZZ", 1, "invalid integer '0xZZ'"),
        ("n = -0x1", 1, "'-0x1': a sign is not allowed on hex, octal or binary integers"),
        ("s = \"bad \\q escape\"", 1, "invalid escape '\\q' in string"),
        ("s = \"bad \\\nescape\"", 1, "invalid escape in string: a backslash followed by byte 0x0A"),
        ("s = \"\\uD800\"", 1, "invalid unicode escape '\\uD800'"),
        ("a = [1, 2", 1, "unterminated array opened on line 1"),
        ("a = [1 2]", 1, "expected ',' or ']' in array, found '2'"),
        ("a = {x = 1 y = 2}", 1, "expected ',' or '}' in inline table, found 'y'"),
        ("a = {x = 1}\n[a]\n", 2, "inline table 'a' (line 1) cannot be extended"),
        ("a = {x = 1}\n[a.b]\n", 2, "inline table 'a' (line 1) cannot be extended"),
        ("a = 1\n[a.b]\n", 2, "'a' is already a value (line 1), not a table"),
        ("a = 1\na.b = 2\n", 2, "'a' is already a value (line 1), not a table"),
        ("[a.b]\n[a]\nb.c = 1\n", 3, "cannot add keys to table 'b' (line 1) with a dotted key"),
        ("s = '''never closed\n\n", 1, "unterminated multi-line string"),
        ("s = \"\"\"never closed\n\n", 1, "unterminated multi-line string"),
        ("[t\n", 1, "expected ']' to close the table header"),
        ("\n\n\"\"\"k\"\"\" = 1", 3, "a key cannot be a multi-line string"),
        ("s = \"a\u{01}b\"", 1, "control character U+01 must be escaped in a string"),
        ("a = 1\rb = 2", 1, "expected the end of the line, found a carriage return (CR) without a line feed after it"),
        ("s = \"\"\"a\\\rb\"\"\"", 1, "a carriage return (CR) must be followed by a line feed"),
        ("s = \"\"\"a\\  \r  \nb\"\"\"", 1, "a carriage return (CR) must be followed by a line feed"),
        ("s = \"\"\"a\\\n  \r b\"\"\"", 2, "control character U+0D must be escaped in a string"),
    ] as [(String, Int, String)])
    func rejects(text: String, line: Int, message: String) {
        let error = failure(text)
        #expect(error == TOMLError(line: line, message: message), "\(text)")
    }
}
