import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// Issue 12: a worker's output through the daemon (`Logs`, `log-buffer-lines`), `bgworkerctl
/// logs` and `status NAME`, and StateReason in `status NAME`; the real bgworkerd and bgworkerctl.
@Suite("bgworkerctl logs and status with bgworkerd")
struct ClientsLogsTests {
    typealias Setup = ClientsEndToEndTests.Setup

    /// `bgworkerctl logs NAME -n N` until its last line is `last`. Nothing announces that the
    /// daemon's output thread has taken a line in, so each try is a real call, bounded by a deadline.
    static func logs(_ setup: Setup, _ arguments: [String], endingWith last: String) async throws -> String {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let r = try await setup.ctl(["logs"] + arguments)
            if r.status == 0, r.stdout.hasSuffix(last) { return r.stdout }
            guard ContinuousClock.now < deadline else { throw TestProcessError("logs \(arguments) never ended with \(last): \(r)") }
        }
    }

    @Test func logsAndStatusShowTheLastLinesOfTheBoundedBuffer() async throws {
        try await Setup.with({ _ in
            """
            [worker.chatty]
            exec = ["/bin/sh", "-c", "i=1; while [ $i -le 30 ]; do echo line $i; i=$((i+1)); done; echo '<3>trouble' >&2; exec sleep 1000"]
            log-buffer-lines = 20

            [worker.quiet]
            exec = ["/bin/sleep", "1000"]
            """
        }) { setup in
            // The buffer keeps the last 20 of 31 lines; -n takes the newest of those.
            let all = try await Self.logs(setup, ["chatty", "-n", "100"], endingWith: "chatty: trouble")
            let lines = all.split(separator: "\n")
            #expect(lines.count == 20, "\(all)")
            #expect(lines.first?.hasSuffix(" chatty: line 12") == true, "\(all)")
            let three = try await setup.ctl(["logs", "chatty", "-n", "3"])
            #expect(three.stdout.split(separator: "\n").map { $0.split(separator: " ", maxSplits: 2).last ?? "" }
                    == ["chatty: line 29", "chatty: line 30", "chatty: trouble"], "\(three)")

            // JSON: µs since the epoch and the text, oldest first.
            let json = try await setup.ctl(["logs", "chatty", "-n", "2", "--json"])
            let rows = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
            #expect(rows.map { $0["text"] as? String } == ["line 30", "trouble"])
            let now = UInt64(Date().timeIntervalSince1970 * 1_000_000)
            #expect(rows.allSatisfy { ($0["time"] as? UInt64).map { $0 <= now && $0 > now - 600_000_000 } ?? false })

            // status NAME: the reason, then the last 10 lines, as systemctl status.
            let status = try await setup.ctl(["status", "chatty"])
            #expect(status.stdout.contains("State: running (started)"), "\(status.stdout)")
            let tail = status.stdout.components(separatedBy: "\n\n").last ?? ""
            #expect(tail.split(separator: "\n").count == 10 && tail.hasSuffix("chatty: trouble"), "\(status.stdout)")

            // A worker that printed nothing: no lines, no blank tail; an unknown one: exit 4 with a suggestion.
            #expect(try await setup.ctl(["logs", "quiet"]).stdout == "")
            #expect(!(try await setup.ctl(["status", "quiet"]).stdout.contains("\n\n")))
            let unknown = try await setup.ctl(["logs", "chaty"])
            #expect(unknown.status == 4)
            #expect(unknown.stderr == "bgworkerctl: no worker named 'chaty' (did you mean 'chatty'?) (\(BgWorkerBus.ErrorName.noSuchWorker))",
                    "\(unknown.stderr)")

            // A non-root caller may read them (anyone may, as the contract says).
            let nobody = try await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                        builtExecutablePath("bgworkerctl"), "--bus", setup.bus.address, "logs", "chatty", "-n", "1"])
            #expect(nobody.status == 0 && nobody.stdout.hasSuffix("chatty: trouble"), "\(nobody)")
        }
    }

    /// Issue 12: what a worker prints reaches the terminal harmless: control characters (ANSI
    /// escapes, `\r`, C1) as `\xNN`, a NUL as a line break, bytes that are not UTF-8 as U+FFFD, in
    /// `logs` and in `status NAME`; `--json` keeps the text as the daemon has it.
    @Test func hostileOutputIsPrintedEscaped() async throws {
        try await Setup.with({ _ in
            #"""
            [worker.hostile]
            exec = ["/bin/sh", "-c", "printf 'a\\000b\\n'; printf '\\033[31mred\\033[0m\\n'; printf 'hidden\\rshown\\n'; printf 'c1 \\302\\233 caf\\351\\n'; printf 'tab\\tand \\\\ stay\\n'; printf 'after\\n'; exec sleep 1000"]
            """#
        }) { setup in
            let escaped = [#"a"#, #"b"#, #"\x1b[31mred\x1b[0m"#, #"hidden\x0dshown"#, "c1 \\x9b caf\u{FFFD}", "tab\tand \\ stay", "after"]
            let logs = try await Self.logs(setup, ["hostile", "-n", "100"], endingWith: "hostile: after")
            #expect(logs.split(separator: "\n").map { $0.split(separator: " ", maxSplits: 3).last.map(String.init) ?? "" } == escaped,
                    "\(logs.debugDescription)")
            #expect(!logs.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" && $0 != "\t" || (0x7F...0x9F).contains($0.value) })

            let status = try await setup.ctl(["status", "hostile"])
            let tail = status.stdout.components(separatedBy: "\n\n").last ?? ""
            #expect(tail.split(separator: "\n").map { $0.split(separator: " ", maxSplits: 3).last.map(String.init) ?? "" } == escaped,
                    "\(status.stdout.debugDescription)")

            let json = try await setup.ctl(["logs", "hostile", "-n", "100", "--json"])
            let rows = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
            #expect(rows.compactMap { $0["text"] as? String }
                    == ["a", "b", "\u{1B}[31mred\u{1B}[0m", "hidden\rshown", "c1 \u{9B} caf\u{FFFD}", "tab\tand \\ stay", "after"])
        }
    }

    /// A reason holds what the configuration holds (a program's path): `status NAME` and `watch`
    /// print its control characters escaped too.
    @Test func aReasonWithControlCharactersIsPrintedEscaped() async throws {
        try await Setup.with({ directory in
            let program = directory.file("prog\u{1B}[31mred")
            FileManager.default.createFile(atPath: program, contents: Data("#!/bin/sh\nexec sleep 1000\n".utf8))
            chmod(program, 0o755)
            return "[worker.odd]\nexec = [\"\(directory.file("prog"))\\u001b[31mred\"]\nrestart-delay = 30\n"
        }) { setup in
            let watch = try await setup.watch()
            defer { Task { await watch.process.terminate() } }
            try FileManager.default.removeItem(atPath: setup.directory.file("prog\u{1B}[31mred"))
            _ = try await setup.ctl(["restart", "odd"])
            let escaped = #"execve \#(setup.directory.file("prog"))\x1b[31mred: No such file or directory"#
            try await watch.lines.wait("the backoff, escaped") { $0.contains("worker odd: backoff") && $0.contains(escaped) }
            #expect(!watch.lines.all.joined().unicodeScalars.contains("\u{1B}"), "\(watch.lines.all)")
            let status = try await setup.ctl(["status", "odd"])
            #expect(status.stdout.contains(escaped) && !status.stdout.unicodeScalars.contains("\u{1B}"), "\(status.stdout.debugDescription)")
        }
    }

    /// `logs -f` follows through the journal; where there is none (this test's machine unless
    /// journald runs), it is refused with the reason, since the daemon has no signal for new
    /// lines. The journal path itself needs journald and is not covered here.
    @Test(.enabled(if: access("/run/systemd/journal/socket", F_OK) != 0, "journald runs here: -f would follow the journal"))
    func followWithoutAJournalIsRefusedWithTheReason() async throws {
        try await Setup.with({ _ in "[worker.quiet]\nexec = [\"/bin/sleep\", \"1000\"]" }) { setup in
            var r = try await setup.ctl(["logs", "-f", "quiet"])
            #expect(r.status == 1, "\(r)")
            #expect(r.stderr.hasPrefix("bgworkerctl: cannot follow quiet: journald does not run here"), "\(r.stderr)")
            r = try await setup.ctl(["logs", "--follow", "nope"])
            #expect(r.status == 4, "\(r)")
        }
    }
}
