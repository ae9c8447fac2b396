import BgWorkerCore
import TestSupport
import Testing

/// The notify protocol's parser (docs/notify.md). Expected values for numbers and UTF-8 come from
/// systemd 252's own functions (safe_atollu_full, parse_pid, utf8_is_valid_n in
/// libsystemd-shared-252.so, called from a C probe), so "as systemd" here means measured.
@Suite struct NotifyMessageTests {
    private func parse(_ text: String) throws -> NotifyMessage {
        try NotifyMessage(parsing: Array(text.utf8))
    }

    private func refusal(_ bytes: [UInt8]) -> NotifyMessageError? {
        do {
            _ = try NotifyMessage(parsing: bytes)
            return nil
        } catch {
            return error
        }
    }

    // MARK: each key

    @Test func readyOne() throws {
        var expected = NotifyMessage()
        expected.ready = true
        #expect(try parse("READY=1") == expected)
        #expect(try parse("READY=1\n") == expected)
    }

    @Test func readyOtherThanOneIsNotReady() throws {
        for text in ["READY=0", "READY=", "READY", "READY=1 ", " READY=1", "READY=11", "ready=1", "READY=true"] {
            #expect(try parse(text) == NotifyMessage(), "\(text)")
        }
    }

    @Test func reloadingStoppingAndBarrier() throws {
        #expect(try parse("RELOADING=1").reloading)
        #expect(try parse("STOPPING=1").stopping)
        #expect(try parse("BARRIER=1").barrier)
        #expect(try parse("RELOADING=0") == NotifyMessage())
        #expect(try parse("STOPPING=yes") == NotifyMessage())
        #expect(try parse("BARRIER=0") == NotifyMessage())
    }

    @Test func statusText() throws {
        #expect(try parse("STATUS=cycle 3").status == "cycle 3")
        #expect(try parse("STATUS=").status == "")  // clears, as in systemd
        #expect(try parse("STATUS=a=b=c").status == "a=b=c")
        #expect(try parse("STATUS=  spaced  ").status == "  spaced  ")
        #expect(try parse("STATUS=tab\there").status == "tab\there")
        #expect(try parse("STATUS=\"quoted\" 'x'").status == "\"quoted\" 'x'")
        #expect(try parse("STATUS=ünïcödé ✓ 😀").status == "ünïcödé ✓ 😀")
        #expect(try parse("READY=1").status == nil)
    }

    @Test func watchdog() throws {
        #expect(try parse("WATCHDOG=1").watchdogPing)
        #expect(try parse("WATCHDOG=trigger").watchdogTrigger)
        #expect(try parse("WATCHDOG=trigger").watchdogPing == false)
        for text in ["WATCHDOG=0", "WATCHDOG=", "WATCHDOG=TRIGGER", "WATCHDOG=1 ", "WATCHDOG"] {
            #expect(try parse(text) == NotifyMessage(), "\(text)")
        }
        #expect(try parse("WATCHDOG_USEC=5000000").watchdogUsec == 5_000_000)
        #expect(try parse("WATCHDOG_USEC=5000000").watchdogPing == false)
        // 0 is a value: under systemd it turns the watchdog off.
        #expect(try parse("WATCHDOG_USEC=0").watchdogUsec == 0)
        #expect(try parse("WATCHDOG_USEC=abc").watchdogUsec == nil)
        #expect(try parse("WATCHDOG_USEC=").watchdogUsec == nil)
        #expect(try parse("WATCHDOG_USEC=-1").watchdogUsec == nil)
    }

    @Test func extendTimeoutAndMainPid() throws {
        #expect(try parse("EXTEND_TIMEOUT_USEC=30000000").extendTimeoutUsec == 30_000_000)
        #expect(try parse("EXTEND_TIMEOUT_USEC=0").extendTimeoutUsec == 0)
        #expect(try parse("EXTEND_TIMEOUT_USEC=1s").extendTimeoutUsec == nil)
        #expect(try parse("MAINPID=4242").mainPid == 4242)
    }

    @Test func everyKeyInOneDatagram() throws {
        let message = try parse(
            "READY=1\nRELOADING=1\nSTOPPING=1\nSTATUS=all\nWATCHDOG=1\nWATCHDOG_USEC=7\nEXTEND_TIMEOUT_USEC=8\nMAINPID=9\n")
        var expected = NotifyMessage()
        expected.ready = true
        expected.reloading = true
        expected.stopping = true
        expected.status = "all"
        expected.watchdogPing = true
        expected.watchdogUsec = 7
        expected.extendTimeoutUsec = 8
        expected.mainPid = 9
        #expect(message == expected)
    }

    @Test func unknownKeysAndLinesWithoutEqualsAreIgnored() throws {
        #expect(try parse("FDSTORE=1\nERRNO=5\nBUSERROR=x\nnonsense\n=\n=1\nX") == NotifyMessage())
        #expect(try parse("garbage\nREADY=1\nmore garbage").ready)
        #expect(try parse("WATCHDOG_USECS=5").watchdogUsec == nil)
        #expect(try parse("XREADY=1") == NotifyMessage())
    }

    // MARK: repeats: systemd takes the first line of a valued key

    @Test func repeatedKeysFirstWins() throws {
        #expect(try parse("STATUS=one\nSTATUS=two").status == "one")
        #expect(try parse("WATCHDOG_USEC=1\nWATCHDOG_USEC=2").watchdogUsec == 1)
        #expect(try parse("EXTEND_TIMEOUT_USEC=3\nEXTEND_TIMEOUT_USEC=4").extendTimeoutUsec == 3)
        #expect(try parse("MAINPID=5\nMAINPID=6").mainPid == 5)
        // Only the first WATCHDOG= line is read: a ping first hides a later trigger.
        let both = try parse("WATCHDOG=1\nWATCHDOG=trigger")
        #expect(both.watchdogPing && !both.watchdogTrigger)
        // A bad first value is not replaced by a later good one.
        #expect(try parse("WATCHDOG_USEC=x\nWATCHDOG_USEC=9").watchdogUsec == nil)
        #expect(try parse("WATCHDOG=bogus\nWATCHDOG=1").watchdogPing == false)
        // Flags are found anywhere, repeats change nothing.
        #expect(try parse("READY=0\nREADY=1\nREADY=1").ready)
    }

    // MARK: numbers, as systemd 252's safe_atou64 (measured, see the suite's comment)

    static let numbers: [(String, UInt64?)] = [
        ("0", 0), ("1", 1), ("5", 5), (" 5", 5), ("\t7", 7), ("+5", 5), ("-0", 0), ("-5", nil),
        ("0x10", 16), ("0X1f", 31), ("0x", nil), ("0xg", nil), ("010", 8), ("08", nil), ("0o17", 15),
        ("0O7", 7), ("0b101", 5), ("0B1", 1), ("0b", nil), ("0b2", nil), ("5 ", nil), ("", nil),
        ("abc", nil), ("18446744073709551615", 18_446_744_073_709_551_615), ("18446744073709551616", nil),
        ("0xffffffffffffffff", 18_446_744_073_709_551_615), ("0x10000000000000000", nil), ("1_000", nil),
        ("00", 0), ("+", nil), ("-", nil), ("+-5", nil), ("- 5", nil), ("1e3", nil), ("30000000", 30_000_000),
        ("\u{0B}5", 5), ("\u{0C}0b1", nil), ("0b-1", nil), ("0o-7", nil),
    ]

    @Test(arguments: numbers)
    func numberAsSystemd(text: String, expected: UInt64?) throws {
        #expect(try parse("WATCHDOG_USEC=\(text)").watchdogUsec == expected)
        #expect(try parse("EXTEND_TIMEOUT_USEC=\(text)").extendTimeoutUsec == expected)
    }

    static let pids: [(String, Int32?)] = [
        ("0", nil), ("1", 1), ("-1", nil), ("2147483647", 2_147_483_647), ("2147483648", nil),
        ("4294967297", nil), (" 7", 7), ("0x10", 16), ("+3", 3), ("abc", nil),
    ]

    @Test(arguments: pids)
    func mainPidAsSystemd(text: String, expected: Int32?) throws {
        #expect(try parse("MAINPID=\(text)").mainPid == expected)
    }

    // MARK: line splitting

    @Test func crlfAndBareCarriageReturnsSplitLines() throws {
        let message = try parse("READY=1\r\nSTATUS=x\r\n")
        #expect(message.ready && message.status == "x")
        #expect(try parse("STATUS=a\rREADY=1").status == "a")
        #expect(try parse("STATUS=a\rREADY=1").ready)
    }

    @Test func emptyLinesAndMissingFinalNewline() throws {
        #expect(try parse("\n\n\nREADY=1\n\n\n").ready)
        #expect(try parse("READY=1\nSTATUS=no final newline").status == "no final newline")
        #expect(try parse("\n") == NotifyMessage())
    }

    @Test func backslashTakesTheNextByteLiterally() throws {
        // systemd's splitter (extract_first_word, no flags) drops a backslash and keeps the next byte.
        #expect(try parse("STATUS=a\\b").status == "ab")
        #expect(try parse("STATUS=a\\\\b").status == "a\\b")
        // An escaped newline stays in the line: READY=1 is part of the status, not a line.
        let escaped = try parse("STATUS=a\\\nREADY=1")
        #expect(escaped.status == "a\nREADY=1")
        #expect(!escaped.ready)
        #expect(try parse("READY=\\1").ready)
        // A final unpaired backslash: systemd's splitter fails and drops the datagram.
        #expect(refusal(Array("READY=1\nSTATUS=C:\\".utf8)) == .trailingBackslash)
    }

    // MARK: what refuses a whole datagram

    @Test func emptyDatagramSaysNothing() throws {
        #expect(try NotifyMessage(parsing: [UInt8]()) == NotifyMessage())
        #expect(try NotifyMessage(parsing: [UInt8(0)]) == NotifyMessage())
    }

    @Test func sizeLimitIs4096() throws {
        let status4096 = Array("STATUS=".utf8) + Array(repeating: UInt8(ascii: "s"), count: 4096 - 7)
        #expect(status4096.count == NotifyMessage.maximumSize)
        let message = try NotifyMessage(parsing: status4096)
        #expect(message.status?.utf8.count == 4089)
        #expect(refusal(status4096 + [UInt8(ascii: "s")]) == .tooLarge(4097))
        #expect(refusal(Array(repeating: UInt8(ascii: "\n"), count: 100_000)) == .tooLarge(100_000))
        // The trailing NUL systemd permits does not buy a 4097th byte.
        #expect(refusal(status4096 + [0]) == .tooLarge(4097))
    }

    @Test func veryLongStatusInAFullDatagram() throws {
        // Multi-byte text up to the limit: 1362 three-byte characters after READY=1 and STATUS=.
        let prefix = "READY=1\nSTATUS="
        let text = String(repeating: "✓", count: (4096 - prefix.utf8.count) / 3)
        let message = try parse(prefix + text)
        #expect(message.ready && message.status == text)
    }

    @Test func nulBytes() throws {
        // One trailing NUL is permitted (systemd: "but don't expect it").
        #expect(try NotifyMessage(parsing: Array("READY=1\0".utf8)).ready)
        #expect(try NotifyMessage(parsing: Array("STATUS=x\n\0".utf8)).status == "x")
        #expect(refusal(Array("READY=1\0\0".utf8)) == .embeddedNUL(offset: 7))
        #expect(refusal(Array("STATUS=a\0b".utf8)) == .embeddedNUL(offset: 8))
        #expect(refusal(Array("\0READY=1".utf8)) == .embeddedNUL(offset: 0))
        #expect(refusal([0, 0]) == .embeddedNUL(offset: 0))
        #expect(refusal(Array("READY=1\n\0\nSTATUS=x".utf8)) == .embeddedNUL(offset: 8))
    }

    @Test func barrierMustBeAlone() throws {
        #expect(try parse("BARRIER=1\n").barrier)
        #expect(try parse("\nBARRIER=1\n\n") == { var m = NotifyMessage(); m.barrier = true; return m }())
        #expect(refusal(Array("BARRIER=1\nREADY=1".utf8)) == .barrierWithOtherLines(1))
        #expect(refusal(Array("READY=1\nBARRIER=1\nBARRIER=1".utf8)) == .barrierWithOtherLines(2))
        #expect(refusal(Array("BARRIER=1\nnonsense".utf8)) == .barrierWithOtherLines(1))
    }

    @Test func errorsDescribeThemselves() {
        #expect(NotifyMessageError.tooLarge(4097).description == "datagram of 4097 bytes, over 4096")
        #expect(NotifyMessageError.embeddedNUL(offset: 3).description == "NUL byte at offset 3")
        #expect(NotifyMessageError.barrierWithOtherLines(2).description == "BARRIER=1 with 2 other lines")
        #expect(NotifyMessageError.trailingBackslash.description.contains("backslash"))
    }

    // MARK: UTF-8 in STATUS=, as systemd 252's utf8_is_valid (measured)

    static let utf8Cases: [([UInt8], Bool)] = [
        ([0x01], true), ([0x7F], true), ([0xC2, 0x85], true), ([0xEF, 0xB7, 0x8F], true),
        ([0xEF, 0xB7, 0xB0], true), ([0xF4, 0x8F, 0xBF, 0xBD], true), ([0xE2, 0x80, 0xA8], true),
        ([0xEF, 0xBB, 0xBF], true), ([0xEE, 0x80, 0x80], true),
        ([0xF4, 0x8F, 0xBF, 0xBF], false),  // U+10FFFF, a noncharacter
        ([0xEF, 0xB7, 0x90], false),  // U+FDD0
        ([0xEF, 0xBF, 0xBE], false),  // U+FFFE
        ([0xF0, 0x9F, 0xBF, 0xBE], false),  // U+1FFFE
        ([0xED, 0xA0, 0x80], false), ([0xED, 0xBF, 0xBF], false),  // surrogates
        ([0xC1, 0xBF], false), ([0xE0, 0x80, 0x80], false), ([0xC0, 0xAF], false),  // overlong
        ([0xF8, 0x88, 0x80, 0x80, 0x80], false), ([0xF4, 0x90, 0x80, 0x80], false),  // beyond U+10FFFF
        ([0xFF], false), ([0x80], false), ([0xC3, 0x28], false), ([0xE2, 0x82], false),
    ]

    @Test(arguments: utf8Cases)
    func statusUTF8AsSystemd(bytes: [UInt8], valid: Bool) throws {
        let message = try NotifyMessage(parsing: Array("READY=1\nSTATUS=a".utf8) + bytes + Array("b".utf8))
        #expect(message.ready)  // the rest of the datagram counts either way
        if valid {
            #expect(message.status.map { Array($0.utf8) } == [UInt8(ascii: "a")] + bytes + [UInt8(ascii: "b")])
        } else {
            #expect(message.status == nil)
        }
    }

    @Test func invalidFirstStatusIsNotReplacedByALaterOne() throws {
        let message = try NotifyMessage(parsing: Array("STATUS=".utf8) + [0xFF] + Array("\nSTATUS=ok".utf8))
        #expect(message.status == nil)
    }

    /// Random bytes never crash the parser, and whatever it accepts obeys the limits (the
    /// libFuzzer target, Tests/Fuzz/notify-message, does the same guided by coverage).
    @Test func randomDatagramsNeverCrash() throws {
        var random = SeededRandom(seed: 11)
        let alphabet = Array("READY=1\nSTATUS=WATCHDOG_USEC=0x\\\r\0trigger".utf8) + [0xFF, 0xC3, 0xED]
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...200, using: &random)
            let bytes = (0..<length).map { _ in alphabet.randomElement(using: &random)! }
            if let message = try? NotifyMessage(parsing: bytes), let status = message.status {
                #expect(!status.utf8.contains(0))
            }
        }
    }
}
