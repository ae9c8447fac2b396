import ArgumentParser
import Glibc

/// The exit status of a usage error (unknown option or command, missing or invalid argument) in
/// every bgworker program: 1, as systemctl and the contract's "other failures" of bgworkerctl.
/// ArgumentParser's own would be 64 (EX_USAGE); one status across the programs is easier to
/// script against than two.
public let usageErrorStatus: Int32 = 1

extension ParsableArguments {
    /// Ends the program for an error from parsing (or from `run`): help and `--version` print to
    /// standard output and exit 0; a usage error prints ArgumentParser's message and exits
    /// `usageErrorStatus`; anything else exits as ArgumentParser says.
    public static func exitForError(_ error: any Error) -> Never {
        guard exitCode(for: error) == .validationFailure else { exit(withError: error) }
        writeLine(fullMessage(for: error), to: STDERR_FILENO)
        Glibc.exit(usageErrorStatus)
    }

    /// `parseOrExit()` with `usageErrorStatus` for usage errors.
    public static func parseOrExitWithUsageStatus() -> Self {
        do {
            return try parse()
        } catch {
            exitForError(error)
        }
    }
}
