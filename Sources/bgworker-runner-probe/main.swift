// Test helper, not installed: a process that runs a ProcessRunner with one worker, so that a test
// can SIGKILL it as the daemon would be killed and check what is left.
//
//   bgworker-runner-probe GROUP-FILE PROGRAM [ARG...]
//
// Starts PROGRAM as worker "probe" (its output on our stderr as `probe: line`), prints
// `pid=<worker pid>` on stdout, then waits until killed.
import BgWorkerDaemon
import Glibc

func say(_ text: String, to fd: Int32) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

let arguments = CommandLine.arguments
guard arguments.count >= 3 else {
    say("usage: bgworker-runner-probe GROUP-FILE PROGRAM [ARG...]\n", to: 2)
    exit(2)
}
do {
    let runner = try ProcessRunner(processGroupFile: arguments[1], output: .fileDescriptor(2))
    let spec = LaunchSpec(
        name: "probe", argv: Array(arguments[2...]), environment: ["PATH": "/usr/bin:/bin"])
    let pid = try await runner.start(spec)
    say("pid=\(pid)\n", to: 1)
    for await _ in runner.events {}
} catch {
    say("bgworker-runner-probe: \(error)\n", to: 2)
    exit(1)
}
