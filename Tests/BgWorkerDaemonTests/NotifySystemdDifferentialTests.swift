import Foundation
import TestSupport
import Testing

@testable import BgWorkerCore

/// The notify parser's building blocks against systemd's own: the helpers its service manager
/// reads a datagram with (the line splitter, safe_atou64, utf8_is_valid), called in systemd's
/// private library by a C probe (Fixtures/systemd-parse-probe.c), on the same 30,000 random inputs.
/// Skipped where that library is missing (systemd not installed); the symbols are systemd 252's.
@Suite struct NotifySystemdDifferentialTests {
    static let library: String? = {
        let directory = "/usr/lib/x86_64-linux-gnu/systemd"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.sorted().last { $0.hasPrefix("libsystemd-shared-") && $0.hasSuffix(".so") }
            .map { "\(directory)/\($0)" }
    }()

    @Test(.enabled(if: library != nil, "systemd's private library libsystemd-shared-*.so is not installed"))
    func parserAgreesWithSystemdsHelpers() async throws {
        let library = try #require(Self.library)
        let directory = try TemporaryDirectory(prefix: "bgw-notify-diff")
        defer { directory.remove() }
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/systemd-parse-probe.c").path
        let probe = directory.file("probe")
        let compiler = try ChildProcess(
            ["cc", "-o", probe, source, library, "-Wl,-rpath,\((library as NSString).deletingLastPathComponent)"],
            captureStderr: true)
        let compiled = try await compiler.waitForExit(timeout: .seconds(60))
        let diagnostic = WaitStatus.exitCode(compiled) == 0 ? "" : (try await compiler.readErrorLine() ?? "")
        try #require(WaitStatus.exitCode(compiled) == 0, "cc failed (symbols of another systemd?): \(diagnostic)")

        // Alphabets that reach every branch: number prefixes and signs, separators and
        // backslashes, UTF-8 lead and continuation bytes.
        var random = SeededRandom(seed: 252)
        let numberBytes = Array("0123456789xXoObB+- \t\u{0B}\u{0C}\r\nabcfg_".utf8)
        let splitBytes = Array("AB=\\\n\r ".utf8)
        let utf8Bytes: [UInt8] = [0x41, 0x80, 0xBF, 0xC2, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xB7, 0x9F, 0x90, 0xA0, 0xFF, 0xBE, 0xBD, 0x8F]
        // Code points near every edge systemd and Swift care about, surrogates included (encoded
        // the UTF-8 way, which makes them invalid), beside stray bytes.
        let edges: [ClosedRange<UInt32>] = [0...0x7F, 0x80...0x7FF, 0xD7F0...0xE00F, 0xFDC0...0xFDFF, 0xFFF0...0x1000F,
                                            0x1FFF0...0x2000F, 0xEFFF0...0xF000F, 0x10FFF0...0x10FFFF, 0...0x10FFFF]
        func encoded(_ value: UInt32) -> [UInt8] {
            switch value {
            case ..<0x80: [UInt8(value)]
            case ..<0x800: [0xC0 | UInt8(value >> 6), 0x80 | UInt8(value & 0x3F)]
            case ..<0x10000: [0xE0 | UInt8(value >> 12), 0x80 | UInt8((value >> 6) & 0x3F), 0x80 | UInt8(value & 0x3F)]
            default: [0xF0 | UInt8(value >> 18), 0x80 | UInt8((value >> 12) & 0x3F), 0x80 | UInt8((value >> 6) & 0x3F),
                      0x80 | UInt8(value & 0x3F)]
            }
        }
        var inputs: [(kind: Int, bytes: [UInt8])] = []
        for index in 0..<30_000 {
            let kind = index % 3
            if kind == 2 {
                var bytes: [UInt8] = []
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    if Int.random(in: 0..<10, using: &random) < 8 {
                        let range = edges.randomElement(using: &random)!
                        bytes += encoded(UInt32.random(in: range, using: &random)).filter { $0 != 0 }
                    } else {
                        bytes.append(utf8Bytes.randomElement(using: &random)!)
                    }
                }
                inputs.append((kind, bytes.isEmpty ? [0x41] : bytes))
                continue
            }
            let alphabet = [numberBytes, splitBytes][kind]
            let length = Int.random(in: 0...24, using: &random)
            inputs.append((kind, (0..<length).map { _ in alphabet.randomElement(using: &random)! }))
        }
        let hex = { (bytes: [UInt8]) in bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
        let inputFile = directory.file("inputs")
        let outputFile = directory.file("outputs")
        try inputs.map { "\($0.kind) \(hex($0.bytes))\n" }.joined().write(toFile: inputFile, atomically: false, encoding: .utf8)
        let run = try ChildProcess([probe, inputFile, outputFile])
        #expect(WaitStatus.exitCode(try await run.waitForExit(timeout: .seconds(60))) == 0)
        let expected = try String(contentsOfFile: outputFile, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        try #require(expected.count == inputs.count + 1)

        var differences: [String] = []
        for (index, input) in inputs.enumerated() {
            let ours: String
            switch input.kind {
            case 0: ours = NotifyMessage.unsignedNumber(input.bytes[...]).map { String($0) } ?? "nil"
            case 1: ours = (try? NotifyMessage.splitLines(input.bytes)).map { $0.map { hex(Array($0)) + "|" }.joined() } ?? "ERR"
            default: ours = NotifyMessage.statusText(input.bytes[...]) == nil ? "0" : "1"
            }
            guard ours != expected[index] else { continue }
            // Known and documented (docs/notify.md): systemd 252 wraps a negative number to a huge
            // one when \v or \f precedes the minus (its check looks at the wrong character).
            if input.kind == 0, ours == "nil", input.bytes.contains(UInt8(ascii: "-")),
               let wrapped = UInt64(expected[index]), wrapped > UInt64(Int64.max) { continue }
            differences.append("kind \(input.kind) \(hex(input.bytes)): systemd \(expected[index]), ours \(ours)")
        }
        #expect(differences.isEmpty, "\(differences.count) differences, first: \(differences.prefix(5))")
    }
}
