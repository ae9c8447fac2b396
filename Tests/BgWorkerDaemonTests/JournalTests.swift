import CShims
import Foundation
import Glibc
import Logging
import TestSupport
import Testing

@testable import BgWorkerDaemon

/// A daemon logger whose lines go to a pipe the test reads.
private struct LineLogging {
    let writer: LogWriter
    let control: LogLevelControl
    let output: CapturedWorkerOutput

    init(level: Logger.Level = .info) throws {
        output = try CapturedWorkerOutput()
        guard case .fileDescriptor(let fd) = output.destination else { throw TestProcessError("no fd") }
        writer = try LogWriter(destination: .lines(fd: fd))
        control = LogLevelControl(level)
    }

    func logger(_ label: String) -> Logger {
        Logger(label: label) { [writer, control] label in DaemonLogHandler(label: label, level: control, writer: writer) }
    }
}

@Suite("Journal and the daemon's log handler")
struct JournalTests {
    @Test func theStderrFallbackIsOneReadableLinePerMessage() async throws {
        let logging = try LineLogging()
        var logger = logging.logger("bgworkerd.supervisor")
        logger[metadataKey: "worker"] = "db-sync"
        logger.warning("restarting\nsoon", metadata: ["delay": "1.5", "reason": "exited with status 3"])
        await logging.writer.flush()
        let line = try await logging.output.line("the warning") { _ in true }
        let pattern = #/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z warning bgworkerd\.supervisor: restarting\\nsoon delay=1\.5 reason="exited with status 3" worker=db-sync$/#
        #expect(line.wholeMatch(of: pattern) != nil, "got: \(line)")
        logging.output.close()
    }

    @Test func theLevelIsSharedAndChangesAtOnce() async throws {
        let logging = try LineLogging(level: .info)
        let supervisor = logging.logger("supervisor")
        let bus = logging.logger("bus")
        supervisor.debug("hidden")
        logging.control.level = .debug  // as the bus's LogLevel setter does
        bus.debug("shown")
        #expect(supervisor.logLevel == .debug)
        var other = bus
        other.logLevel = .error  // one daemon, one level: every logger follows
        supervisor.warning("filtered")
        supervisor.error("kept")
        await logging.writer.flush()
        #expect(try await logging.output.line("first") { _ in true }.hasSuffix(" debug bus: shown"))
        #expect(try await logging.output.line("second") { _ in true }.hasSuffix(" error supervisor: kept"))
        logging.output.close()
    }

    @Test func levelNamesAndPriorities() {
        let names = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        #expect(names.compactMap(LogLevelControl.level(named:)).map(\.syslogPriority) == [7, 7, 6, 5, 4, 3, 2])
        #expect(LogLevelControl.level(named: "verbose") == nil)
    }

    /// A client's who/why or a worker's path reaches the log file as one printable line: no raw
    /// control character (an ESC could recolour the admin's terminal, a CR hide what precedes it),
    /// and a `\n` typed by the client stays distinct from an escaped newline.
    @Test func aLogLineEscapesControlCharactersAndBackslashes() {
        let record = LogRecord(
            level: .notice, message: "Inhibit by evil\n\u{1B}[31mRED\r\u{07}\u{85}\u{2028} typed \\n end\tok",
            label: "bgworkerd.access", metadata: [("who", "a \"b\"\u{1B}"), ("plain", "x")],
            file: "f", function: "g", line: 1, time: timespec())
        let line = record.formattedLine()
        #expect(!line.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\t") || (0x7F...0x9F).contains($0.value) || $0 == "\u{2028}" })
        #expect(line.hasSuffix(#"bgworkerd.access: Inhibit by evil\n\x1b[31mRED\r\x07\x85\x2028 typed \\n end"# + "\tok" + #" who="a \"b\"\x1b" plain=x"#))
    }

    @Test func journalFieldsOfARecord() {
        let record = LogRecord(
            level: .notice, message: "worker started", label: "bgworkerd.supervisor",
            metadata: [("worker", "db-sync"), ("restart-count", "2"), ("_private", "x"), ("9lives", "y")],
            file: "BgWorkerDaemon/Supervisor.swift", function: "start(_:)", line: 42, time: timespec())
        #expect(record.journalFields(identifier: "bgworkerd") == [
            "MESSAGE=worker started", "PRIORITY=5", "SYSLOG_IDENTIFIER=bgworkerd",
            "CODE_FILE=BgWorkerDaemon/Supervisor.swift", "CODE_LINE=42", "CODE_FUNC=start(_:)",
            "LOGGER=bgworkerd.supervisor", "WORKER=db-sync", "RESTART_COUNT=2", "PRIVATE=x", "F9LIVES=y",
        ])
    }

    @Test func workerLinesTakeTheirPriorityFromAnSdDaemonPrefix() {
        func line(_ text: String) -> WorkerLine {
            WorkerLine(worker: "w", pid: 1, defaultPriority: 6, raw: Array(text.utf8))
        }
        #expect(line("<3>broken").priority == 3)
        #expect(line("<3>broken").text == "broken")
        #expect(line("plain\r").text == "plain")
        #expect(line("<9>not a priority").priority == 6)
        #expect(line("<9>not a priority").text == "<9>not a priority")
    }

    @Test(
        .enabled(if: isRoot || isCI, "needs root: mounts a private /run/systemd and /run/log for a private journald"),
        .timeLimit(.minutes(1)))
    func messagesAndWorkerLinesReachARealJournald() async throws {
        let journald = "/lib/systemd/systemd-journald"
        try #require(FileManager.default.isExecutableFile(atPath: journald), "\(journald) (Debian package systemd)")
        // In a private mount namespace: a journald of its own (waited for through its READY=1),
        // the probe's messages, `journalctl --sync`, then every entry as JSON on stdout.
        let script = """
            import os, socket, subprocess, sys
            for path in ("/run/systemd", "/run/log"):
                os.makedirs(path, exist_ok=True)
                subprocess.run(["mount", "-t", "tmpfs", "tmpfs", path], check=True)
            os.makedirs("/run/systemd/journal")
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind("/run/systemd/test-notify")
            notify.settimeout(30)
            env = dict(os.environ, NOTIFY_SOCKET="/run/systemd/test-notify")
            journald = subprocess.Popen([sys.argv[1]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while b"READY=1" not in notify.recv(4096):
                pass
            subprocess.run([sys.argv[2], "journal"], check=True)
            subprocess.run(["journalctl", "--sync"], check=True)
            out = subprocess.run(["journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager"],
                                 check=True, capture_output=True).stdout
            journald.terminate()
            journald.wait()
            sys.stdout.buffer.write(out)
            """
        let child = try ChildProcess(
            ["unshare", "--mount", "--propagation", "private", "--", "/usr/bin/python3", "-c", script,
             journald, builtProduct("bgworker-runner-probe")],
            captureStdout: true)
        var entries: [[String: String]] = []
        while let line = try await child.readLine(timeout: .seconds(30)) {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
            // journalctl prints a value that is not printable UTF-8 as an array of its bytes.
            entries.append(object.compactMapValues { value in
                (value as? String) ?? (value as? [Int]).map { String(decoding: $0.map { UInt8(truncatingIfNeeded: $0) }, as: UTF8.self) }
            })
        }
        #expect(WaitStatus.exitCode(try await child.waitForExit()) == 0)

        let warning = try #require(entries.first { $0["SYSLOG_IDENTIFIER"] == "bgworker-probe" })
        #expect(warning["MESSAGE"] == "probe warning")
        #expect(warning["PRIORITY"] == "4")
        #expect(warning["WORKER"] == "demo")
        #expect(warning["RESTART_COUNT"] == "3")
        #expect(warning["LOGGER"] == "bgworkerd.probe")
        #expect(warning["CODE_FUNC"] == "logToJournal()")
        #expect(warning["CODE_FILE"]?.hasSuffix("main.swift") == true)

        let workerLines = entries.filter { $0["SYSLOG_IDENTIFIER"] == "probe-worker" }
        let byMessage = Dictionary(workerLines.map { ($0["MESSAGE"] ?? "", $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byMessage["out-line"]?["PRIORITY"] == "6")
        #expect(byMessage["warn-line"]?["PRIORITY"] == "4")
        // stdout and stderr share one pipe (2 fds per worker, issue 15): a priority is the line's
        // `<N>` prefix, else 6 on either stream.
        #expect(byMessage["err-line"]?["PRIORITY"] == "6")
        #expect(byMessage["bad-line"]?["PRIORITY"] == "3")
        #expect(byMessage["out-line"]?["BGWORKER_NAME"] == "probe-worker")
        #expect(byMessage["out-line"]?["BGWORKER_PID"].flatMap { Int32($0) } != nil)
        // A NUL ends a line, as journald's own stdout streams have it (one MESSAGE holding it would
        // be a blob); a byte that is not UTF-8 becomes U+FFFD; an escape sequence is kept.
        #expect(byMessage["nul-a"] != nil && byMessage["nul-b"] != nil, "\(workerLines.map { $0["MESSAGE"] ?? "" })")
        #expect(byMessage["caf\u{FFFD}"] != nil, "\(workerLines.map { $0["MESSAGE"] ?? "" })")
        #expect(byMessage["esc-\u{1B}[31mred"] != nil, "\(workerLines.map { $0["MESSAGE"] ?? "" })")
    }
}
