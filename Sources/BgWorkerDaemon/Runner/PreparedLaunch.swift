// Everything the vfork-style child needs, made before the clone: the child shares our memory and
// may not allocate, look up users (NSS may open files or sockets) or touch Swift objects.
import CShims
import Glibc

/// The ids a worker runs as, resolved from names in the parent.
public struct WorkerCredentials: Sendable, Equatable {
    public internal(set) var uid: uid_t?
    public internal(set) var gid: gid_t?
    /// Supplementary groups; nil keeps the daemon's.
    public internal(set) var groups: [gid_t]?

    /// The outcome of resolving a spec's `user` and `group`, made off the event loop (NSS may
    /// open files or sockets) when the configuration is loaded, and handed to the spawn.
    public enum Resolution: Sendable, Equatable {
        case resolved(WorkerCredentials)
        case failed(RunnerError)

        /// Resolves now, on the calling thread (never the event loop: see `BlockingWork`).
        public static func resolve(user: String?, group: String?, worker: String) -> Resolution {
            do {
                return .resolved(try WorkerCredentials.resolve(user: user, group: group, worker: worker))
            } catch {
                return .failed(error)
            }
        }
    }

    static let inherited = WorkerCredentials(uid: nil, gid: nil, groups: nil)

    /// Resolves `user` and `group` (names or numbers). A user brings its primary group and its
    /// supplementary groups (getgrouplist) unless `group` is given; a group alone replaces the
    /// supplementary groups with itself. Supplementary groups are left alone when the daemon is
    /// not root (it could not change them).
    static func resolve(user: String?, group: String?, worker: String) throws(RunnerError) -> Self {
        var credentials = WorkerCredentials.inherited
        var userName: String?
        if let user {
            if let entry = passwdEntry(user) {
                credentials.uid = entry.uid
                credentials.gid = entry.gid
                userName = entry.name
            } else if let uid = uid_t(user) {
                credentials.uid = uid
            } else {
                throw RunnerError(.invalidSpec, worker: worker, context: "no such user \"\(user)\"")
            }
        }
        if let group {
            guard let gid = groupID(group) else {
                throw RunnerError(.invalidSpec, worker: worker, context: "no such group \"\(group)\"")
            }
            credentials.gid = gid
        }
        if let uid = credentials.uid, credentials.gid == nil {
            throw RunnerError(
                .invalidSpec, worker: worker,
                context: "uid \(uid) has no passwd entry, so no group: set group too")
        }
        if let gid = credentials.gid, geteuid() == 0 {
            credentials.groups = userName.map { groupList(user: $0, gid: gid) } ?? [gid]
        }
        return credentials
    }

}

/// A launch ready for `_bgw_spawn`: NUL-terminated C strings and arrays that live as long as
/// this object.
final class PreparedLaunch: @unchecked Sendable {
    // Safety of @unchecked Sendable: every property is set in init and never changed; the
    // pointed-to memory is owned by this object, written in init and by the one spawn's child
    // (WATCHDOG_PID's value, while the spawning thread is suspended) and read by that spawn.
    let spec: LaunchSpec
    let credentials: WorkerCredentials
    private let argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
    private let envp: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
    private let workingDirectory: UnsafeMutablePointer<CChar>?
    private let groups: [gid_t]
    /// Where the child writes its pid, when the environment has `WATCHDOG_PID` set to
    /// `watchdogPidPlaceholder`.
    private let watchdogPidValue: UnsafeMutablePointer<CChar>?
    /// What the process runner sets `WATCHDOG_PID` to; the child replaces it with its own pid.
    static let watchdogPidPlaceholder = "0000000000"

    init(_ spec: LaunchSpec) throws(RunnerError) {
        guard let program = spec.argv.first, program.hasPrefix("/") else {
            throw RunnerError(.invalidSpec, worker: spec.name, context: "argv[0] is not an absolute path: \(spec.argv.first ?? "(empty argv)")")
        }
        guard !spec.argv.contains(where: { $0.utf8.contains(0) }),
              !spec.environment.contains(where: { $0.key.utf8.contains(0) || $0.value.utf8.contains(0) || $0.key.contains("=") || $0.key.isEmpty })
        else {
            throw RunnerError(.invalidSpec, worker: spec.name, context: "a NUL byte in argv or an invalid environment name")
        }
        self.spec = spec
        // Resolved ahead, off the loop, by the supervisor; a caller that gives none (a test, a
        // tool) pays the look-up here.
        switch spec.credentials ?? .resolve(user: spec.user, group: spec.group, worker: spec.name) {
        case .resolved(let resolved): credentials = resolved
        case .failed(let error): throw error
        }
        groups = credentials.groups ?? []
        argv = Self.cArray(spec.argv)
        let environment = spec.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let envp = Self.cArray(environment)
        self.envp = envp
        // The child writes its pid into this entry's value (10 digits of room): see _bgw_spawn.
        watchdogPidValue = environment.firstIndex(of: "WATCHDOG_PID=\(Self.watchdogPidPlaceholder)").map {
            envp[$0]! + "WATCHDOG_PID=".utf8.count
        }
        workingDirectory = spec.workingDirectory.map { strdup($0)! }
    }

    deinit {
        Self.freeArray(argv)
        Self.freeArray(envp)
        free(workingDirectory)
    }

    /// Calls `body` with the request for `_bgw_spawn`, valid only during the call.
    func withRequest<T>(stdin: Int32, stdout: Int32, stderr: Int32, _ body: (inout _bgw_spawn_request) -> T) -> T {
        groups.withUnsafeBufferPointer { groupBuffer in
            var request = _bgw_spawn_request(
                path: argv[0],
                argv: UnsafePointer(argv),
                envp: UnsafePointer(envp),
                working_directory: workingDirectory,
                stdin_fd: stdin, stdout_fd: stdout, stderr_fd: stderr,
                set_groups: credentials.groups == nil ? 0 : 1,
                groups: groupBuffer.baseAddress,
                ngroups: groupBuffer.count,
                set_gid: credentials.gid == nil ? 0 : 1,
                gid: credentials.gid ?? 0,
                set_uid: credentials.uid == nil ? 0 : 1,
                uid: credentials.uid ?? 0,
                record_fd: -1, record_offset: 0, record_generation: 0,
                watchdog_pid_value: watchdogPidValue, nofile_soft: 0)
            return body(&request)
        }
    }

    private static func cArray(_ strings: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let array = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: strings.count + 1)
        for (index, string) in strings.enumerated() { array[index] = strdup(string) }
        array[strings.count] = nil
        return array
    }

    private static func freeArray(_ array: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) {
        var index = 0
        while let string = array[index] {
            free(string)
            index += 1
        }
        array.deallocate()
    }

    /// What a failed step of `_bgw_spawn` was doing, for the error's context.
    func describe(step: Int32) -> String {
        let program = spec.argv.first ?? ""
        switch Int(step) {
        case _BGW_SPAWN_STACK: return "mmap of the child's stack"
        case _BGW_SPAWN_CLONE: return "clone"
        case _BGW_SPAWN_SIGNALS: return "resetting signals"
        case _BGW_SPAWN_SETSID: return "setsid"
        case _BGW_SPAWN_RECORD: return "writing its process group into the record"
        case _BGW_SPAWN_STDIO: return "dup2 of stdin/stdout/stderr"
        case _BGW_SPAWN_CHDIR: return "chdir \(spec.workingDirectory ?? "")"
        case _BGW_SPAWN_SETGROUPS: return "setgroups \(groups.map(String.init).joined(separator: ","))"
        case _BGW_SPAWN_SETGID: return "setgid \(credentials.gid.map(String.init) ?? "")"
        case _BGW_SPAWN_SETUID: return "setuid \(credentials.uid.map(String.init) ?? "")"
        case _BGW_SPAWN_PDEATHSIG: return "prctl(PR_SET_PDEATHSIG)"
        case _BGW_SPAWN_PARENT_GONE: return "the daemon exited during the spawn"
        case _BGW_SPAWN_CLOSE_FDS: return "close_range"
        case _BGW_SPAWN_EXEC: return "execve \(program)"
        default: return "spawn step \(step)"
        }
    }
}
