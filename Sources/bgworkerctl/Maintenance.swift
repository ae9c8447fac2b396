// `inhibit` and `maintenance`: bgworkerd's maintenance mode (the manager's Inhibit,
// ListInhibitors and Maintenance). `inhibit` works as systemd-inhibit: it holds the inhibitor's
// fd itself while COMMAND runs (COMMAND does not inherit it), and exits with COMMAND's status.
import ArgumentParser
import ClientSupport
import CShims
import DBus
import Glibc
import Synchronization

/// One row of ListInhibitors (`a(ssuut)`).
struct InhibitorInfo {
    var who: String
    var why: String
    var uid: UInt32
    var pid: UInt32
    /// µs since the epoch.
    var since: UInt64

    init?(_ row: DBusValue) {
        guard let fields = row.structureValue, fields.count == 5, let who = fields[0].stringValue,
              let why = fields[1].stringValue, let uid = fields[2].uint32Value, let pid = fields[3].uint32Value,
              let since = fields[4].uint64Value
        else { return nil }
        (self.who, self.why, self.uid, self.pid, self.since) = (who, why, uid, pid, since)
    }

    static let header = ["WHO", "WHY", "UID", "PID", "SINCE"]
    /// who and why come from any client that may Inhibit: control characters escaped.
    var row: [String] { [Terminal.escaped(who), Terminal.escaped(why), String(uid), String(pid), Time.local(microseconds: since)] }
    var json: JSON {
        .object([("who", .string(who)), ("why", .string(why)), ("uid", .uint(UInt64(uid))), ("pid", .uint(UInt64(pid))),
                 ("since", .uint(since))])
    }
}

extension ServiceClient {
    /// ListInhibitors, oldest first.
    func inhibitors() async throws -> [InhibitorInfo] {
        let reply = try await callManager("ListInhibitors")
        guard let rows = reply.first?.arrayValue else {
            throw DBusConnectionError(.invalidMessage, "ListInhibitors answered \(reply)")
        }
        return rows.compactMap(InhibitorInfo.init)
    }
}

struct Maintenance: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the inhibitors that hold maintenance mode (see inhibit).",
        discussion: """
            While any inhibitor is held, every worker without run-during-maintenance = true is \
            stopped and waits in standby. Shows who took each, why, the caller's uid and pid, and since when.
            """)

    @OptionGroup var options: GlobalOptions

    func run() async throws {
        try await Session.run(options) { session in
            let inhibitors = try await session.client.inhibitors()
            session.print(
                inhibitors.isEmpty ? "No inhibitors: maintenance mode is off."
                    : table(InhibitorInfo.header, inhibitors.map(\.row)),
                json: .object([("maintenance", .bool(!inhibitors.isEmpty)), ("inhibitors", .array(inhibitors.map(\.json)))]))
        }
    }
}

struct Inhibit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command while holding maintenance mode (as systemd-inhibit does); exit with its status.",
        discussion: """
            Takes an inhibitor (Inhibit), which returns once every worker without \
            run-during-maintenance = true is stopped, runs COMMAND, and releases the inhibitor when \
            COMMAND exits (or when bgworkerctl dies): the workers start again. COMMAND does not \
            inherit the inhibitor. SIGINT, SIGTERM and SIGHUP sent to bgworkerctl are passed on to \
            COMMAND. Exit status: COMMAND's; 128+N when it was killed by signal N; 127 when it \
            cannot be run; 1 when the inhibitor cannot be taken. Example: \
            bgworkerctl inhibit --why 'package upgrade' -- apt-get upgrade
            """)

    @OptionGroup var options: GlobalOptions

    @Option(help: "Who holds maintenance mode (default: the command, e.g. 'apt-get upgrade').")
    var who: String?

    @Option(help: "Why.")
    var why = "bgworkerctl inhibit"

    @Argument(parsing: .remaining, help: ArgumentHelp("The command and its arguments (after --, so that its options are not taken for bgworkerctl's).", valueName: "command"))
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("inhibit needs a command to run: bgworkerctl inhibit -- COMMAND...") }
    }

    func run() async throws {
        let argv = command
        // By default the command as typed, its program without the folder (`apt-get upgrade`);
        // at most 256 bytes, as the daemon accepts, cut between characters (a cut inside one
        // decoded as U+FFFD, 3 bytes, past the limit).
        let typed = ([String(argv[0].split(separator: "/").last ?? "")] + argv.dropFirst()).joined(separator: " ")
        var holder = who ?? typed
        while holder.utf8.count > 256 { holder.removeLast() }
        var inhibitor: UnixFD?
        try await Session.run(options) { session in
            let reply = try await session.client.callManager(
                "Inhibit", [.string(holder), .string(why)], timeout: ServiceClient.changeTimeout)
            guard case .unixFD(let fd)? = reply.first else {
                throw DBusConnectionError(.invalidMessage, "Inhibit answered no file descriptor: \(reply)")
            }
            inhibitor = fd
        }
        // Held until this process ends; never passed to COMMAND.
        _ = inhibitor?.withDescriptor { fcntl($0, F_SETFD, FD_CLOEXEC) }
        let status = ChildCommand.run(argv)
        inhibitor?.close()
        throw CommandFailure(message: "", status: status)
    }
}

/// COMMAND of `inhibit`, in bgworkerctl's process group (a foreground job of the shell, as
/// systemd-inhibit runs it), with signals passed on.
enum ChildCommand {
    /// The child while it runs (0 otherwise), for the signal handler.
    static let pid = Atomic<Int32>(0)
    static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    /// Runs `argv` (searched in PATH) and returns its exit status, 128+N for signal N, 127 when
    /// it cannot be run.
    static func run(_ argv: [String]) -> Int32 {
        _ = pid.load(ordering: .relaxed)  // the global is initialized before a handler reads it
        var action = sigaction()
        action.sa_flags = SA_SIGINFO | SA_RESTART
        // A signal sent by a process (kill, systemd) goes on to the child. One from the terminal
        // (Ctrl-C: si_code SI_KERNEL) reached the child already: the whole foreground group gets it.
        action.__sigaction_handler.sa_sigaction = { signal, info, _ in
            guard let info, info.pointee.si_code != 0x80 /* SI_KERNEL */ else { return }
            let child = ChildCommand.pid.load(ordering: .relaxed)
            if child > 0 { kill(child, signal) }
        }
        sigemptyset(&action.sa_mask)
        for signal in forwarded { sigaction(signal, &action, nil) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with default dispositions (bgworkerctl ignores SIGPIPE and handles the
        // forwarded ones) and an empty mask.
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in forwarded + [SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        // Only standard input, output and error go to COMMAND (systemd-inhibit's choice): not the
        // inhibitor, nor the bus connection and runtime fds of this process, some of them
        // without close-on-exec.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        _bgw_spawn_actions_closefrom(&actions, 3)

        var arguments = argv.map { strdup($0) } + [nil]
        defer { arguments.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawnp(&child, argv[0], &actions, &attributes, &arguments, environ)
        guard rc == 0 else {
            writeLine("bgworkerctl: cannot run \(argv[0]): \(String(cString: strerror(rc)))", to: STDERR_FILENO)
            return 127
        }
        pid.store(child, ordering: .relaxed)
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 {
            guard errno == EINTR else { return Exit.failure }
        }
        pid.store(0, ordering: .relaxed)
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }
}
