// Pure logic: which host facts a worker needs before it can run, and the messages when they are
// missing. The facts themselves (the file system, NSS) come from the daemon through `WorkerHost`,
// so the core stays free of I/O and tests can answer from a table.

/// What the host says about a worker's user, group, program and folder. Each method answers nil
/// when all is well, else the reason in a few words ("no such user", "No such file or directory").
public protocol WorkerHost {
    /// `user` and `group` as the worker sets them (either may be nil: the daemon's own).
    func credentialsProblem(user: String?, group: String?) -> CredentialsProblem?
    /// Whether `path` is a regular file that the worker's user and group may execute.
    func executableProblem(_ path: String, user: String?, group: String?) -> String?
    /// Whether `path` is an existing directory.
    func directoryProblem(_ path: String) -> String?
}

/// Which of `user` and `group` does not resolve, and why.
public enum CredentialsProblem: Sendable, Equatable {
    case user(String)
    case group(String)
}

extension Configuration {
    /// Refuses what cannot run: `user` and `group` must resolve, `exec[0]` must be a file the
    /// worker's user may execute, `working-directory` must be a directory. Every problem is
    /// located at its key's line. Disabled workers are checked too: Enable must not be the first
    /// time anyone learns that the program is missing.
    public func validate(on host: some WorkerHost) -> [ConfigError] {
        var errors: [ConfigError] = []
        for worker in workers {
            let origin = origins[worker.name] ?? WorkerOrigin(file: "<configuration>", line: 0)
            func report(_ key: String, _ message: String) {
                errors.append(
                    ConfigError(
                        file: origin.file, line: origin.keyLines[key] ?? origin.line, table: "worker.\(worker.name)",
                        key: key, message: message))
            }
            var credentialsResolve = true
            switch host.credentialsProblem(user: worker.user, group: worker.group) {
            case .user(let why)?:
                report("user", "'user' \"\(worker.user ?? "")\": \(why)")
                credentialsResolve = false
            case .group(let why)?:
                report("group", "'group' \"\(worker.group ?? "")\": \(why)")
                credentialsResolve = false
            case nil:
                break
            }
            // Whether the user may execute it is only known once the user resolves.
            if credentialsResolve, let program = worker.exec.first,
                let why = host.executableProblem(program, user: worker.user, group: worker.group)
            {
                report("exec", "'exec[0]' \(program): \(why)")
            }
            if let directory = worker.workingDirectory, let why = host.directoryProblem(directory) {
                report("working-directory", "'working-directory' \(directory): \(why)")
            }
        }
        // Workers come in name order; messages read best in file and line order.
        return errors.enumerated().sorted { a, b in
            (a.element.file, a.element.line, a.offset) < (b.element.file, b.element.line, b.offset)
        }.map(\.element)
    }
}
