// bgworkerctl: bgworkerd's command-line client. One bus connection and a call or two per
// command; exit status 0, 4 (unknown worker) or 1 (any other failure, usage errors included).
import ArgumentParser
import ClientSupport
import Glibc

/// Runs the async `run()` (on an existential, the synchronous requirement would be picked).
func runCommand<Command: AsyncParsableCommand>(_ command: Command) async throws {
    var command = command
    try await command.run()
}

signal(SIGPIPE, SIG_IGN)
do {
    var command = try BgWorkerCtl.parseAsRoot()
    if let asyncCommand = command as? any AsyncParsableCommand {
        try await runCommand(asyncCommand)
    } else {
        try command.run()  // ArgumentParser's own, such as `help`
    }
    exit(0)
} catch let failure as CommandFailure {
    writeLine("bgworkerctl: \(failure.message)", to: STDERR_FILENO)
    exit(failure.status)
} catch {
    // Help and version requests exit 0 with their text on stdout; everything else is a usage
    // error, reported as ArgumentParser words it, with status 1.
    let code = BgWorkerCtl.exitCode(for: error)
    if code == .success {
        BgWorkerCtl.exit(withError: error)
    }
    writeLine(BgWorkerCtl.fullMessage(for: error), to: STDERR_FILENO)
    exit(Exit.failure)
}
