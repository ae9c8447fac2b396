import CShims
import Foundation
import Glibc
import Synchronization

/// A real systemd (252 on Debian 12) as PID 1 of a private PID + mount (+ UTS, IPC) namespace, with
/// its own system bus, for tests of the systemd runner: it starts transient units for real.
///
/// Safety, in this order, before systemd runs (see the recipe: a systemd with the normal unit
/// directories runs systemd-tmpfiles and empties the machine's real /tmp):
/// - the mount namespace is made private and gets tmpfs on /run, /tmp and /var/tmp (folders the
///   test shares, `sharedPaths` and the current directory, are bind-mounted back into them);
/// - `SYSTEMD_UNIT_PATH` points at a folder on that /run holding only stub targets, dbus.socket,
///   dbus.service and the caller's `extraUnits`;
/// - systemd gets a cgroup subtree of its own (`.../bgw-systemd-ID` in every cgroup hierarchy), so
///   two namespaces never share a unit's cgroup and the sandbox's limits still apply;
/// - a new UTS namespace keeps its hostname setup away from the machine's.
///
/// Started with `setsid unshare --pid --fork --mount --mount-proc ...` as a direct child.
/// Readiness is event-driven: systemd's own `READY=1` on a `NotifySocket` (the container
/// interface), then `gdbus wait` for `org.freedesktop.systemd1` on its bus.
///
/// Needs root. Use `SystemdNamespace.with { ns in ... }`, which stops it even when the body throws.
public final class SystemdNamespace: Sendable {
    /// systemd's pid as seen from outside (the test's PID namespace).
    public let systemdPid: pid_t
    /// The `unshare` process (our direct child); systemd is its child.
    public let process: ChildProcess
    /// Host-side folder: systemd's console output (`log`) and the copies of extra units.
    public let directory: TemporaryDirectory
    private let systemdPidfd: Int32
    /// The namespace's own cgroup subtree, one folder per hierarchy; removed by `stop`.
    public let cgroupDirectories: [String]
    private let stopped = Mutex(false)

    /// systemd's system bus, reachable from outside through /proc/PID/root.
    public var busAddress: String { "unix:path=\(busSocketPath)" }
    public var busSocketPath: String { "/proc/\(systemdPid)/root/run/dbus/system_bus_socket" }
    /// Where the units are inside the namespace (`SYSTEMD_UNIT_PATH`).
    public static let unitDirectory = "/run/bgw-test-units"
    /// Where systemd logs: `null` unless `BGWORKER_TEST_SYSTEMD_LOG` says otherwise (`kmsg` to
    /// read it with dmesg while debugging). Not `console`: systemd, as PID 1 of a container, then
    /// opens the machine's /dev/console, and under a loaded parallel test run such systemds were
    /// seen to exit with status 255 before they were ready; with `kmsg` or `null` they never did.
    public static var logTarget: String {
        ProcessInfo.processInfo.environment["BGWORKER_TEST_SYSTEMD_LOG"] ?? "null"
    }
    /// What the setup script printed (systemd itself logs to `logTarget`).
    public var log: String { (try? String(contentsOfFile: directory.file("systemd.log"), encoding: .utf8)) ?? "" }

    private init(systemdPid: pid_t, systemdPidfd: Int32, process: ChildProcess, directory: TemporaryDirectory,
                 cgroupDirectories: [String]) {
        self.systemdPid = systemdPid
        self.systemdPidfd = systemdPidfd
        self.process = process
        self.directory = directory
        self.cgroupDirectories = cgroupDirectories
    }

    /// Starts systemd and returns once it owns `org.freedesktop.systemd1` on its bus.
    /// `extraUnits`: unit file name to content, added to the unit folder (e.g. a slice).
    /// `sharedPaths`: folders of the test that units must see although they lie under /tmp,
    /// /var/tmp or /run (a `TemporaryDirectory` with a worker's script, say); they are bind-mounted
    /// at the same paths inside. The current directory (the repository, with `.build`, under
    /// `swift test`) is always shared, so built programs run as units wherever the clone is.
    /// `installable`: for a test that installs a package inside. /etc, /usr and /var become
    /// copy-on-write overlays (their changes live in the namespace's /run and die with it), and
    /// /etc/systemd/system and /usr/lib/systemd/system start empty and are in systemd's unit path,
    /// so the package's units load and none of the machine's do.
    public static func start(
        extraUnits: [String: String] = [:], sharedPaths: [String] = [], installable: Bool = false,
        timeout: Duration = .seconds(60)
    ) async throws -> SystemdNamespace {
        let directory = try TemporaryDirectory(prefix: "bgw-sd")
        let extras = directory.file("units")
        try FileManager.default.createDirectory(atPath: extras, withIntermediateDirectories: true)
        for (name, content) in extraUnits {
            guard !name.contains("/") else { throw TestProcessError("bad unit name \(name)") }
            try content.write(toFile: "\(extras)/\(name)", atomically: true, encoding: .utf8)
        }
        let cgroups = try CgroupPlacement.forNewSubtree(named: "bgw-systemd-\(uniqueID(10))")
        let notify = try NotifySocket()
        let process: ChildProcess
        do {
            // setsid: a session of its own, out of the test's terminal and process group. The
            // child must not lead a group already, or setsid would fork and we would lose its pid.
            let logTarget = Self.logTarget
            process = try ChildProcess(
                ["setsid", "unshare", "--pid", "--fork", "--mount", "--mount-proc", "--uts", "--ipc",
                 "/bin/bash", "-c", initScript(cgroups: cgroups.directories, installable: installable),
                 "bgw-systemd-init", extras]
                    + foldersToShare(sharedPaths),
                extraEnvironment: ["NOTIFY_SOCKET": notify.address, "BGW_SYSTEMD_LOG_TARGET": logTarget],
                captureStdout: false, captureStderr: false, newProcessGroup: false,
                logFile: directory.file("systemd.log"))
        } catch {
            cgroups.remove()
            directory.remove()
            throw error
        }

        func fail(_ why: String) async -> TestProcessError {
            for child in childPids(of: process.pid) { kill(child, SIGKILL) }
            let status = try? await process.waitForExit(timeout: .seconds(30))
            cgroups.remove()
            let log = (try? String(contentsOfFile: directory.file("systemd.log"), encoding: .utf8)) ?? ""
            directory.remove()
            let how = status.map { s in WaitStatus.exitCode(s).map { "exit status \($0)" } ?? "signal \(WaitStatus.signal(s) ?? 0)" } ?? "?"
            return TestProcessError("systemd namespace: \(why) (unshare: \(how))\n--- its output ---\n\(log)")
        }

        // READY=1 from systemd, or the namespace dying first (a failed setup step), whichever comes.
        let ready: Bool
        do {
            ready = try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask { try await notify.waitFor("READY", value: "1", timeout: timeout); return true }
                group.addTask { try await process.waitForExit(timeout: timeout + .seconds(1)); return false }
                defer { group.cancelAll() }
                return try await group.next() ?? false
            }
        } catch {
            throw await fail("no READY=1 within \(timeout): \(error)")
        }
        guard ready else { throw await fail("exited before it was ready") }

        guard let pid = childPids(of: process.pid).first else { throw await fail("unshare has no child") }
        // systemd is unshare's unreaped child while unshare runs, so this pidfd names it for sure.
        let pidfd = _bgw_pidfd_open(pid, 0)
        guard pidfd >= 0 else { throw await fail("pidfd_open(\(pid)): \(errno)") }
        let namespace = SystemdNamespace(systemdPid: pid, systemdPidfd: pidfd, process: process,
                                         directory: directory, cgroupDirectories: cgroups.directories)
        // systemd connects to the bus once dbus.service is up; gdbus wait follows NameOwnerChanged.
        let seconds = max(1, timeout.components.seconds)
        let r = try await TestSupport.run(["gdbus", "wait", "--address", namespace.busAddress, "--timeout", "\(seconds)",
                               "org.freedesktop.systemd1"], timeout: timeout + .seconds(5))
        guard r.status == 0 else {
            let log = namespace.log
            await namespace.stop()
            throw TestProcessError("systemd namespace: org.freedesktop.systemd1 did not appear on its bus: \(r.stderr)\n\(log)")
        }
        return namespace
    }

    /// Starts a namespace, runs `body`, and stops the namespace whether `body` returns or throws.
    public static func with<T: Sendable>(
        extraUnits: [String: String] = [:], sharedPaths: [String] = [], installable: Bool = false,
        _ body: (SystemdNamespace) async throws -> T
    ) async throws -> T {
        try await withCleanup(try await start(extraUnits: extraUnits, sharedPaths: sharedPaths, installable: installable),
                              cleanup: { await $0.stop() }, body)
    }

    deinit {
        if !stopped.withLock({ $0 }) {
            _ = _bgw_pidfd_send_signal(systemdPidfd, SIGKILL)
            process.waitBlocking()
            CgroupPlacement.remove(cgroupDirectories)
            directory.remove()
        }
        close(systemdPidfd)
    }

    /// `argv` prefixed so that it runs inside the namespace (its mounts and PID namespace: the
    /// normal `/run/dbus/system_bus_socket` and `systemctl` work there; pids are the namespace's).
    public func nsenterArguments(_ argv: [String]) -> [String] {
        ["nsenter", "-t", "\(systemdPid)", "-m", "-p", "-u", "-i"] + argv
    }

    /// Runs a short command inside the namespace to completion.
    public func run(inside argv: [String], timeout: Duration = .seconds(30)) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await TestSupport.run(nsenterArguments(argv), timeout: timeout)
    }

    /// Calls busctl against the namespace's bus from outside (`busctl --address=... ARGS`).
    public func busctl(_ arguments: [String], timeout: Duration = .seconds(30)) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await TestSupport.run(["busctl", "--address=\(busAddress)"] + arguments, timeout: timeout)
    }

    /// Keeps a client (python3-dbus) connected and subscribed to systemd's signals (`Subscribe()`),
    /// so that `JobNew`/`JobRemoved` and units' `PropertiesChanged` are sent on the bus even when no
    /// other client subscribed; a `BusMonitor` then sees them. Returns once subscribed. Terminate
    /// the returned process when done (the namespace's `stop` ends it too: its bus goes away).
    public func keepSubscribed() async throws -> ChildProcess {
        let script = """
            import dbus, signal, sys
            bus = dbus.bus.BusConnection(sys.argv[1])
            bus.call_blocking("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                              "org.freedesktop.systemd1.Manager", "Subscribe", "", [])
            print("subscribed", flush=True)
            signal.pause()
            """
        let subscriber = try ChildProcess(["/usr/bin/python3", "-c", script, busAddress],
                                          captureStdout: true, captureStderr: false,
                                          logFile: directory.file("subscriber.log"))
        guard try await subscriber.readLine(timeout: .seconds(20)) == "subscribed" else {
            await subscriber.terminate(grace: .seconds(1))
            throw TestProcessError("the systemd subscriber did not subscribe: \((try? String(contentsOfFile: directory.file("subscriber.log"), encoding: .utf8)) ?? "")")
        }
        return subscriber
    }

    /// Ends the namespace: SIGKILL to systemd (every process in the namespace dies with it),
    /// reaps `unshare`, removes the cgroup subtree and the host folder. Safe to call twice.
    public func stop() async {
        guard stopped.withLock({ done in defer { done = true }; return !done }) else { return }
        _ = _bgw_pidfd_send_signal(systemdPidfd, SIGKILL)
        _ = try? await process.waitForExit(timeout: .seconds(30))
        CgroupPlacement.remove(cgroupDirectories)
        directory.remove()
    }

    /// The script run as the namespace's first process; it ends by exec'ing systemd (same pid).
    /// Arguments: the folder of extra units, then the folders to share.
    private static func initScript(cgroups: [String], installable: Bool) -> String {
        let moves = cgroups.map { dir in
            "mkdir -p '\(dir)'; echo $$ > '\(dir)/cgroup.procs'"
        }.joined(separator: "\n")
        // Copy-on-write /etc, /usr, /var on the private /run, before /var/tmp gets its tmpfs.
        let overlays = !installable ? "" : """
            for dir in etc usr var; do
              mkdir -p "/run/bgw-overlay/$dir/upper" "/run/bgw-overlay/$dir/work"
              mount -t overlay overlay -o "lowerdir=/$dir,upperdir=/run/bgw-overlay/$dir/upper,workdir=/run/bgw-overlay/$dir/work" "/$dir"
            done
            """
        // Empty unit folders that the package fills, once dbus's units are copied out.
        let unitFolders = !installable ? "" : """
            mount -t tmpfs -o mode=755 tmpfs /usr/lib/systemd/system
            mount -t tmpfs -o mode=755 tmpfs /etc/systemd/system
            unit_path="$units:/etc/systemd/system:/usr/lib/systemd/system"
            """
        return """
            set -euo pipefail
            extras=$1; shift
            # A cgroup subtree of our own in every hierarchy, so that this systemd's units never share
            # a cgroup with another test's systemd.
            \(moves)
            mount --make-rprivate /
            # Shared folders under /run, /tmp or /var/tmp wait on a private staging mount while those
            # get their own tmpfs, and then move back to the same paths.
            mount -t tmpfs -o mode=700 tmpfs /mnt
            i=0
            for path in "$@"; do mkdir -p "/mnt/$i"; mount --bind "$path" "/mnt/$i"; i=$((i + 1)); done
            # Private /run, /tmp and /var/tmp BEFORE systemd runs: a systemd that sees the real /tmp
            # empties it (systemd-tmpfiles), and that deletion reaches the shared filesystem.
            mount -t tmpfs -o mode=755 tmpfs /run
            \(overlays)
            units=\(unitDirectory)
            mkdir -p "$units"
            cp -a "$extras"/. "$units"/
            mount -t tmpfs -o mode=1777 tmpfs /tmp
            mount -t tmpfs -o mode=1777 tmpfs /var/tmp
            i=0
            for path in "$@"; do mkdir -p "$path"; mount --move "/mnt/$i" "$path"; i=$((i + 1)); done
            umount /mnt
            printf '[Unit]\\nDescription=minimal\\nWants=dbus.socket dbus.service\\n' > "$units/minimal.target"
            for t in sysinit basic shutdown sockets timers paths local-fs remote-fs network slices; do
              [ -e "$units/$t.target" ] || printf '[Unit]\\nDescription=%s stub\\n' "$t" > "$units/$t.target"
            done
            cp /lib/systemd/system/dbus.socket /lib/systemd/system/dbus.service "$units"/
            unit_path=$units
            \(unitFolders)
            export container=other SYSTEMD_UNIT_PATH="$unit_path"
            exec /lib/systemd/systemd --system --unit=minimal.target --log-target="$BGW_SYSTEMD_LOG_TARGET" --show-status=no
            """
    }

    /// Of `paths` and the current directory, those the private mounts would hide (under /run,
    /// /tmp or /var/tmp), without any that another one already contains.
    static func foldersToShare(_ paths: [String]) -> [String] {
        let hidden = ["/run", "/tmp", "/var/tmp"]
        let candidates = (paths + [FileManager.default.currentDirectoryPath])
            .map { URL(fileURLWithPath: $0).standardizedFileURL.resolvingSymlinksInPath().path }
            .filter { path in hidden.contains { path.hasPrefix($0 + "/") } }
        let unique = Set(candidates).sorted()
        return unique.filter { path in !unique.contains { $0 != path && path.hasPrefix($0 + "/") } }
    }
}

/// Where a systemd in a namespace gets its own cgroups: one path, the same in every hierarchy
/// (systemd uses the path of its own cgroup as its root in every controller), below the deepest
/// cgroup the test already runs in, so that limits set on the sandbox still hold. (Also a
/// caller's "unit": a subtree named `NAME.scope`, as systemd names its cgroups.)
public struct CgroupPlacement: Sendable {
    /// The new subtree's folder in each hierarchy (mount point + path).
    public let directories: [String]

    public static func forNewSubtree(named name: String) throws -> CgroupPlacement {
        let hierarchies = currentCgroups()
        guard !hierarchies.isEmpty else { throw TestProcessError("no cgroup hierarchy found in /proc/self/cgroup") }
        let base = hierarchies.map(\.path).max { $0.count < $1.count } ?? "/"
        let path = (base == "/" ? "" : base) + "/" + name
        // cpuset (v1) needs cpus and mems copied into every new child before a task may join;
        // systemd does not use the v1 cpuset controller, so it stays where it is.
        return CgroupPlacement(directories: hierarchies.filter { !$0.controllers.contains("cpuset") }
            .map { $0.mountPoint + path })
    }

    public func remove() { Self.remove(directories) }

    /// Removes each subtree depth-first (cgroup folders go with rmdir once no process is left).
    static func remove(_ directories: [String]) {
        func removeTree(_ dir: String) {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            for entry in entries {
                var info = stat()
                let child = "\(dir)/\(entry)"
                if lstat(child, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR { removeTree(child) }
            }
            rmdir(dir)
        }
        for dir in directories { removeTree(dir) }
    }

    struct Hierarchy {
        var controllers: [String]
        var mountPoint: String
        var path: String
    }

    /// Our cgroup in each mounted hierarchy, from /proc/self/cgroup and /proc/self/mountinfo.
    static func currentCgroups() -> [Hierarchy] {
        let cgroupText = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
        let mountText = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
        let mounts: [(root: String, point: String, type: String, options: Set<String>)] = mountText
            .split(separator: "\n").compactMap { line in
                let halves = line.components(separatedBy: " - ")
                guard halves.count == 2 else { return nil }
                let left = halves[0].split(separator: " "), right = halves[1].split(separator: " ")
                guard left.count >= 5, right.count >= 3 else { return nil }
                return (String(left[3]), String(left[4]), String(right[0]),
                        Set(right[2].split(separator: ",").map(String.init)))
            }
        return cgroupText.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { return nil }
            let controllers = fields[1].split(separator: ",").map(String.init)
            let path = String(fields[2])
            let mount = controllers.isEmpty
                ? mounts.first { $0.type == "cgroup2" }
                : mounts.first { $0.type == "cgroup" && Set(controllers).isSubset(of: $0.options) }
            guard let mount else { return nil }
            // A mount of a sub-tree (root != "/") shows paths relative to that root.
            var relative = path
            if mount.root != "/" && path.hasPrefix(mount.root) { relative = String(path.dropFirst(mount.root.count)) }
            if relative.isEmpty { relative = "/" }
            return Hierarchy(controllers: controllers, mountPoint: mount.point, path: relative)
        }
    }
}
