// bgworkerctl: bgworkerd's command-line client. One bus connection and a call or two per
// command; exit status 0, 4 (unknown worker), 1 (any other failure, usage errors included:
// `usageErrorStatus`), and systemctl's for is-active/is-failed.
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
    // The async parse: shell completion of worker names asks the daemon.
    var command = try await BgWorkerCtl.asyncParseAsRoot()
    if let asyncCommand = command as? any AsyncParsableCommand {
        try await runCommand(asyncCommand)
    } else {
        try command.run()  // ArgumentParser's own, such as `help`
    }
    exit(0)
} catch let failure as CommandFailure {
    // An empty message: the status says it all (is-active).
    if !failure.message.isEmpty { writeLine("bgworkerctl: \(failure.message)", to: STDERR_FILENO) }
    exit(failure.status)
} catch {
    // Help, version and completion requests exit 0 with their text on stdout; a usage error
    // exits usageErrorStatus, as ArgumentParser words it.
    BgWorkerCtl.exitForError(error)
}
