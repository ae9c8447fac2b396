import Foundation
import Glibc
import Testing
import TestSupport

/// Issue 12, item 3: the daemon names the caller (uid, pid, unit where known) of every
/// state-changing call, granted or refused, and its debug log holds no Swift object dumps.
@Suite("bgworkerd logs its callers", .timeLimit(.minutes(2)))
struct ClientsCallerLogTests {
    typealias Setup = ClientsEndToEndTests.Setup

    /// The daemon on a private bus with its log written into a pipe that the test reads line
    /// by line (so it waits for a line, not for a file to grow).
    struct LoggedDaemon {
        let bus: PrivateBus
        let directory: TemporaryDirectory
        let log: OutputLines

        static func with(_ workers: String, _ body: (LoggedDaemon) async throws -> Void) async throws {
            let directory = try TemporaryDirectory(prefix: "bgw-caller")
            defer { directory.remove() }
            chmod(directory.path, 0o755)
            try await withCleanup(try await PrivateBus(directory: directory), cleanup: { await $0.stop() }) { bus in
                let configPath = directory.file("bgworkerd.toml")
                try "[daemon]\nstate-directory = \"\(directory.file("state"))\"\nlog-level = \"trace\"\n\n\(workers)\n"
                    .write(toFile: configPath, atomically: true, encoding: .utf8)
                let pipe = try NamedPipe(path: directory.file("log.fifo"))
                let reader = try pipe.reader()
                let daemon = try await DaemonProcess(bus: bus, configPath: configPath, arguments: ["--runner", "process"],
                                                     runtimeDirectory: directory.file("run"), logPath: pipe.path)
                try await withCleanup(daemon, cleanup: { await $0.process.terminate(grace: .seconds(10)); await reader.process.terminate() }) { _ in
                    try await body(LoggedDaemon(bus: bus, directory: directory, log: reader.lines))
                }
            }
        }

        /// Runs bgworkerctl through `sh`, which prints its own pid before it becomes bgworkerctl.
        func ctl(_ arguments: [String], as prefix: [String] = []) async throws -> (pid: String, status: Int32) {
            let r = try await run(prefix + ["/bin/sh", "-c", "echo $$; exec \"$@\"", "sh", builtExecutablePath("bgworkerctl"),
                                            "--bus", bus.address] + arguments)
            return (r.stdout.split(separator: "\n").first.map(String.init) ?? "?", r.status)
        }

        func waitForLog(_ text: String) async throws {
            try await log.wait("a log line with \(text)") { $0.contains(text) }
        }
    }

    @Test func everyStateChangeNamesItsCaller() async throws {
        try await LoggedDaemon.with("[worker.dice]\nexec = [\"/bin/sleep\", \"1000\"]") { daemon in
            var call = try await daemon.ctl(["restart", "dice"])
            #expect(call.status == 0)
            try await daemon.waitForLog("bgworkerd.access: Restart dice by uid \(getuid()) pid \(call.pid) (:1.")
            call = try await daemon.ctl(["log-level", "--worker", "dice", "debug"])
            try await daemon.waitForLog(#"Set LogLevel = "debug" on /org/example/BgWorker/worker/dice by uid \#(getuid()) pid \#(call.pid) "#)
            call = try await daemon.ctl(["stop", "dice"])
            try await daemon.waitForLog("Stop dice by uid \(getuid()) pid \(call.pid) ")
            // Reads are not logged: the next change's line comes right after the last one.
            _ = try await daemon.ctl(["status", "dice"])
            call = try await daemon.ctl(["start", "dice"])
            try await daemon.waitForLog("Start dice by uid \(getuid()) pid \(call.pid) ")
            let log = daemon.log.all
            #expect(!log.contains { $0.contains("GetWorker") || $0.contains("GetAll") }, "\(log)")
            // No Swift object dumps anywhere in a trace-level log.
            for dump in ["Swift.", "BgWorkerDaemon.", "Logging.Logger", "Optional(", "(supervisor:"] {
                #expect(!log.contains { $0.contains(dump) }, "\(dump) in:\n\(log.joined(separator: "\n"))")
            }
        }
    }

    /// The unit part: a caller whose cgroup is `NAME.scope` (made here, below the test's own
    /// cgroup in every hierarchy, as systemd names a scope's) is named by it. The daemon reads
    /// the caller's `/proc/PID/cgroup` (cgroup v2's `0::` line), as it would for a unit systemd made.
    @Test(.enabled(if: rootTestsEnabled, "needs root: makes a cgroup for the caller"))
    func aCallerInAUnitIsNamedWithItsUnit() async throws {
        let unit = "bgw-caller-\(uniqueID(6)).scope"
        let cgroup = try CgroupPlacement.forNewSubtree(named: unit)
        defer { cgroup.remove() }
        for directory in cgroup.directories { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        let join = cgroup.directories.map { "echo $$ > '\($0)/cgroup.procs'" }.joined(separator: " && ")
        try await LoggedDaemon.with("[worker.dice]\nexec = [\"/bin/sleep\", \"1000\"]") { daemon in
            let call = try await daemon.ctl(["restart", "dice"], as: ["/bin/sh", "-c", "\(join) && exec \"$@\"", "sh"])
            #expect(call.status == 0)
            try await daemon.waitForLog("bgworkerd.access: Restart dice by uid \(getuid()) pid \(call.pid) unit \(unit) (:1.")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: the caller switches to nobody"))
    func aRefusedCallNamesItsCallerToo() async throws {
        try await LoggedDaemon.with("[worker.dice]\nexec = [\"/bin/sleep\", \"1000\"]") { daemon in
            let call = try await daemon.ctl(["disable", "dice"], as: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
            #expect(call.status == 1)
            try await daemon.waitForLog("bgworkerd.access: refused Disable dice to uid 65534 pid \(call.pid) ")
        }
    }
}
