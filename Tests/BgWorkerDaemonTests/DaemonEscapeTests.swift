import BgWorkerAPI
import CShims
import Foundation
import Glibc
import Testing
import TestSupport

@testable import BgWorkerDaemon

/// A worker's process that leaves the worker's session with setsid (a daemonizer) dies with its
/// worker: bgworkerd is a child subreaper and kills the orphans whose environment names the
/// worker before it reports the exit (docs/process-runner.md "Processes that leave the session").
@Suite(.timeLimit(.minutes(3)))
struct DaemonEscapeTests {
    enum End: String, CaseIterable, Sendable { case disable, stop, crash, daemonSIGTERM }

    /// The pid the escaped process wrote into `file`, once it is there.
    static func pid(in file: String, _ what: String) async throws -> Int32 {
        var pid: Int32?
        try await waitUntil(what, timeout: .seconds(20)) {
            pid = (try? String(contentsOfFile: file, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            return pid != nil
        }
        return pid!
    }

    /// A `setsid sh -c '...' &` of the worker (its parent, the worker's shell, lives on): after
    /// `end`, the escaped process is no longer running when the daemon says the worker stopped,
    /// and a restart never runs beside it.
    @Test(arguments: End.allCases)
    func aProcessThatCalledSetsidDiesWithItsWorker(end: End) async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-escape")
        let file = directory.file("escaped")
        // Each copy removes the file of the one before first, so that a pid read is this copy's.
        let script = "setsid sh -c 'echo $$ > \(file).new && mv \(file).new \(file); exec sleep 1000' & exec sleep 1000"
        try await DaemonFixture.with(shellWorker("esc", script, extra: "stop-timeout = 5")) { fixture in
            let escaped = try await Self.pid(in: file, "the escaped process")
            let main = try await fixture.worker("esc").pid
            #expect(getsid(escaped) == escaped && getsid(escaped) != Int32(main), "it left the worker's session")
            unlink(file)
            switch end {
            case .disable:
                try await fixture.call("Disable", "s", ["esc"])
                #expect(!isAlive(escaped), "the escaped process runs after Disable replied")
                try await fixture.call("Enable", "s", ["esc"])
            case .stop:
                try await fixture.call("Stop", "s", ["esc"])
                #expect(!isAlive(escaped), "the escaped process runs after Stop replied")
                try await fixture.call("Start", "s", ["esc"])
            case .crash:
                kill(pid_t(main), SIGKILL)
                try await waitUntil("a new copy", timeout: .seconds(20)) {
                    let row = try await fixture.worker("esc")
                    return row.state == "running" && row.pid != 0 && row.pid != main
                }
                #expect(!isAlive(escaped), "the old copy's escaped process runs beside the new copy")
            case .daemonSIGTERM:
                try await fixture.stopDaemon()
                #expect(!isAlive(escaped), "the escaped process outlived the daemon's SIGTERM")
                try await fixture.startDaemon()
            }
            let again = try await Self.pid(in: file, "the new copy's escaped process")
            #expect(again != escaped && isAlive(again))
            #expect(!isAlive(escaped), "two copies: \(escaped) and \(again)")
        }
    }

    /// A setsid'd process that starts another one, which calls setsid too: the second one's parent
    /// lives until the exit's scan kills it, so it becomes bgworkerd's child only then, and is
    /// looked for again once its parent has died, before Stop replies.
    @Test func aChainOfSetsidProcessesIsFollowedToItsEnd() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-escape")
        let inner = directory.file("inner"), middle = directory.file("middle")
        let script = "setsid sh -c 'echo $$ > \(middle); setsid sh -c \"echo \\$\\$ > \(inner); exec sleep 1000\" & exec sleep 1000' & exec sleep 1000"
        try await DaemonFixture.with(shellWorker("chain", script, extra: "stop-timeout = 5")) { fixture in
            let outer = try await Self.pid(in: middle, "the first setsid'd process")
            let last = try await Self.pid(in: inner, "the second setsid'd process")
            #expect(getsid(last) == last && getsid(outer) == outer && ProcStat.read(pid: last)?.ppid == outer)
            try await fixture.call("Stop", "s", ["chain"])
            #expect(!isAlive(outer) && !isAlive(last), "left after Stop replied: \([outer, last].filter(isAlive))")
        }
    }

    /// A double fork whose intermediate exits at once: the daemonized process is orphaned while
    /// the worker runs, reparented to bgworkerd, reaped when it exits on its own (no zombie), and
    /// killed with its worker when it does not.
    @Test func aDoubleForkedOrphanIsReapedAndDiesWithItsWorker() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-escape")
        let short = directory.file("short"), long = directory.file("long")
        let python = #"""
            import os, sys
            if os.fork(): os._exit(0)
            os.setsid()
            open(sys.argv[1] + ".new", "w").write(str(os.getpid()))
            os.rename(sys.argv[1] + ".new", sys.argv[1])
            if sys.argv[2] == "exit":
                os.read(os.open(sys.argv[3], os.O_RDONLY), 1)
                os._exit(0)
            os.execv("/bin/sleep", ["sleep", "1000"])
            """#
        try python.write(toFile: directory.file("daemonize.py"), atomically: true, encoding: .utf8)
        let fifo = directory.file("go")
        #expect(mkfifo(fifo, 0o600) == 0)
        let script = "python3 \(directory.file("daemonize.py")) \(short) exit \(fifo); "
            + "python3 \(directory.file("daemonize.py")) \(long) stay; exec sleep 1000"
        try await DaemonFixture.with(shellWorker("dbl", script, extra: "stop-timeout = 5")) { fixture in
            let daemon = try fixture.daemon.pid
            let exiting = try await Self.pid(in: short, "the orphan that exits")
            let staying = try await Self.pid(in: long, "the orphan that stays")
            try await waitUntil("both reparented to bgworkerd") {
                ProcStat.read(pid: exiting)?.ppid == daemon && ProcStat.read(pid: staying)?.ppid == daemon
            }
            // The orphan exits on its own (it reads one byte from the FIFO) while the worker runs.
            let writer = open(fifo, O_WRONLY)
            #expect(writer >= 0)
            _ = write(writer, "x", 1)
            close(writer)
            try await waitUntil("the exited orphan reaped, not left a zombie") {
                kill(exiting, 0) != 0 && errno == ESRCH
            }
            #expect(isAlive(staying) && ProcStat.read(pid: staying)?.ppid == daemon)
            try await fixture.call("Stop", "s", ["dbl"])
            #expect(!isAlive(staying), "the orphan runs after Stop replied")
            try await waitUntil("the killed orphan reaped") { kill(staying, 0) != 0 && errno == ESRCH }
        }
    }
}
