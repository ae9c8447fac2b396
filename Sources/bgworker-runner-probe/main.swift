// Test helper, not installed: runs the process runner (and the daemon's logging) in a process of
// its own, so that a test can SIGKILL it as the daemon would be killed, or run it where journald
// is a private one.
//
//   bgworker-runner-probe run GROUP-FILE PROGRAM [ARG...]
//       Starts PROGRAM as worker "probe" (its output on our stderr as `probe: line`), prints
//       `pid=<worker pid>` on stdout, then waits until killed.
//   bgworker-runner-probe storm GROUP-FILE COUNT PROGRAM [ARG...]
//       Submits COUNT starts of PROGRAM at once (workers w0, w1, ...; BGW_PROBE_MARKER passed on
//       to them when set), prints `pid=<pid>` (or `error=<error>`) as each is answered, then
//       waits until killed: a test SIGKILLs it at a random point of the spawns.
//   bgworker-runner-probe clean GROUP-FILE
//       Starts a runner on GROUP-FILE, as a new daemon would, and prints `killed=<pgid,...>`: the
//       leftover groups it killed.
//   bgworker-runner-probe journal
//       Logs one warning through the daemon's journal handler (identifier bgworker-probe) and
//       runs worker "probe-worker", whose output goes to the journal (with a NUL, a byte that is
//       not UTF-8 and an ANSI escape); exits when all is sent.
import BgWorkerDaemon
import Glibc
import Logging

func say(_ text: String, to fd: Int32) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

func runWorker(groupFile: String, argv: [String]) async throws {
    let runner = try ProcessRunner(processGroupFile: groupFile, output: .fileDescriptor(2))
    let events = runner.eventStream()
    let spec = LaunchSpec(name: "probe", argv: argv, environment: ["PATH": "/usr/bin:/bin"])
    let pid = try await runner.start(spec)
    say("pid=\(pid)\n", to: 1)
    for await _ in events {}
}

func storm(groupFile: String, count: Int, argv: [String]) async throws {
    let runner = try ProcessRunner(processGroupFile: groupFile, output: .fileDescriptor(2))
    let events = runner.eventStream()
    var environment = ["PATH": "/usr/bin:/bin"]
    if let marker = getenv("BGW_PROBE_MARKER") { environment["BGW_PROBE_MARKER"] = String(cString: marker) }
    for index in 0..<count {
        runner.submitStart(LaunchSpec(name: "w\(index)", argv: argv, environment: environment)) { result in
            switch result {
            case .success(let pid): say("pid=\(pid)\n", to: 1)
            case .failure(let error): say("error=\(error)\n", to: 1)
            }
        }
    }
    for await _ in events {}
}

func logToJournal() async throws {
    let writer = try LogWriter(destination: .journal(identifier: "bgworker-probe"))
    let logger = Logger(label: "bgworkerd.probe") { label in
        DaemonLogHandler(label: label, level: LogLevelControl(.info), writer: writer)
    }
    logger.warning("probe warning", metadata: ["worker": "demo", "restart-count": "3"])
    await writer.flush()

    let runner = try ProcessRunner(output: .journal)
    let events = runner.eventStream()
    let script = #"echo out-line; echo "<4>warn-line"; echo err-line >&2; echo "<3>bad-line" >&2; printf 'nul-a\000nul-b\n'; printf 'caf\351\n'"#
        + #"; printf 'esc-\033[31mred\n'"#
    _ = try await runner.start(
        LaunchSpec(name: "probe-worker", argv: ["/bin/sh", "-c", script], environment: ["PATH": "/usr/bin:/bin"]))
    for await event in events {
        if case .exited = event { break }
    }
    await runner.shutdown()
}

let arguments = CommandLine.arguments
do {
    switch arguments.dropFirst().first {
    case "run" where arguments.count >= 4:
        try await runWorker(groupFile: arguments[2], argv: Array(arguments[3...]))
    case "storm" where arguments.count >= 5 && Int(arguments[3]) != nil:
        try await storm(groupFile: arguments[2], count: Int(arguments[3])!, argv: Array(arguments[4...]))
    case "clean" where arguments.count == 3:
        let runner = try ProcessRunner(processGroupFile: arguments[2], output: .fileDescriptor(2))
        say("killed=\(runner.killedLeftoverGroups.map(String.init).joined(separator: ","))\n", to: 1)
        await runner.shutdown()
    case "journal":
        try await logToJournal()
    default:
        say("usage: bgworker-runner-probe run GROUP-FILE PROGRAM [ARG...] | storm GROUP-FILE COUNT PROGRAM [ARG...] | clean GROUP-FILE | journal\n", to: 2)
        exit(2)
    }
} catch {
    say("bgworker-runner-probe: \(error)\n", to: 2)
    exit(1)
}
