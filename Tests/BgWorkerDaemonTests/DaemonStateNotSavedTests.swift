import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// Enable/Disable whose intent cannot be written (read-only state folder, full file system, the
/// state file replaced by a directory) answer StateNotSaved and change nothing: no signal, the
/// worker's state and `Enabled` as before, and after a restart the old intent holds. Stop works
/// all the same.
@Suite(.timeLimit(.minutes(2)))
struct DaemonStateNotSavedTests {
    static let stateNotSaved = BgWorkerBus.ErrorName.stateNotSaved
    /// `on` runs; `off` is disabled over the bus before the state folder breaks.
    static let workers = shellWorker("on", "exec sleep 1000") + shellWorker("off", "exec sleep 1000")

    @Test func stateFileReplacedByADirectory() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            try await fixture.call("Disable", "s", ["off"])
            let file = fixture.stateDirectory + "/enable-state"
            try FileManager.default.removeItem(atPath: file)
            try FileManager.default.createDirectory(atPath: file, withIntermediateDirectories: false)
            let pid = try await fixture.worker("on").pid
            try await Self.expectRefused(fixture, "Disable", "on", pathInMessage: file)
            #expect(try await fixture.worker("on").state == "running")
            #expect(try await fixture.worker("on").pid == pid)
            #expect(try await fixture.property("Enabled", worker: "on").bool == true)

            // bgworkerctl shows the daemon's text and the error's name, and exits 1.
            let ctl = try await run([builtExecutablePath("bgworkerctl"), "--bus", fixture.bus.unixAddress, "disable", "on"])
            #expect(ctl.status == 1, "\(ctl.stderr)")
            #expect(ctl.stderr.contains(file) && ctl.stderr.contains("Is a directory") && ctl.stderr.contains(Self.stateNotSaved),
                    "\(ctl.stderr)")
            #expect(try await fixture.worker("on").state == "running")

            // The file cannot be read either: a restart applies the configured values, and `on`
            // (configured enabled, the intent in force before the refused Disable) runs.
            try await fixture.stopDaemon()
            try await fixture.startDaemon()
            #expect(try await fixture.worker("on").state == "running")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: a read-only bind mount of the state folder"))
    func readOnlyStateFolder() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            try await fixture.call("Disable", "s", ["off"])
            let folder = fixture.stateDirectory
            try await runChecked(["mount", "--bind", folder, folder])
            fixture.atTeardown { runBlocking(["umount", "-l", folder]) }
            try await runChecked(["mount", "-o", "remount,bind,ro", folder])
            try await Self.expectNothingChanges(fixture, systemError: "Read-only file system")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: mounts a tiny tmpfs as the state folder"))
    func fullStateFileSystem() async throws {
        try await DaemonFixture.with(Self.workers, start: false) { fixture in
            let folder = fixture.stateDirectory
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try await runChecked(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", folder])
            fixture.atTeardown { runBlocking(["umount", "-l", folder]) }
            try await fixture.startDaemon()
            try await fixture.call("Disable", "s", ["off"])
            // Fill every block that is left (dd stops at ENOSPC).
            _ = try await run(["dd", "if=/dev/zero", "of=\(folder)/filler", "bs=4096"])
            try await Self.expectNothingChanges(fixture, systemError: "No space left on device")
        }
    }

    /// A Reload that replaces a choice made over the bus (the worker's configured `enabled`
    /// changed) must save that before it changes anything, as Enable/Disable do. It used to apply
    /// the reload and only log the failed write: `off` disabled over the bus, then two reloads on
    /// an unwritable state file (configured false, then true again) left `off` running while the
    /// file still said "disabled, configured true", so the next daemon ran it disabled (found by
    /// an adversarial run, scripts/adversarial/disk.py `--reloads`).
    @Test func aReloadThatReplacesAChoiceThatCannotBeSavedChangesNothing() async throws {
        let configured: (Bool) -> String = { enabled in
            shellWorker("on", "exec sleep 1000") + shellWorker("off", "exec sleep 1000", extra: "enabled = \(enabled)")
        }
        try await DaemonFixture.with(configured(true)) { fixture in
            try await fixture.call("Disable", "s", ["off"])
            let file = fixture.stateDirectory + "/enable-state"
            let saved = fixture.stateDirectory + "/saved"
            try FileManager.default.moveItem(atPath: file, toPath: saved)
            try FileManager.default.createDirectory(atPath: file, withIntermediateDirectories: false)

            try fixture.writeConfiguration(configured(false))
            let refused = try await fixture.dbusSend("Reload")
            #expect(refused.output.contains("Error \(Self.stateNotSaved)") && refused.output.contains(file), "\(refused.output)")
            try fixture.writeConfiguration(configured(true))
            try await fixture.call("Reload")  // the configuration the daemon has: nothing to write
            let before = try await fixture.worker("off")
            #expect(before.state == "disabled" && !before.enabled, "\(before)")

            // The disk back (the file as the last save left it): the next daemon agrees.
            try FileManager.default.removeItem(atPath: file)
            try FileManager.default.moveItem(atPath: saved, toPath: file)
            try await fixture.stopDaemon(signal: SIGKILL)
            try await fixture.startDaemon()
            let after = try await fixture.worker("off")
            #expect(after.enabled == before.enabled && after.state == before.state, "before the restart \(before), after \(after)")
        }
    }

    /// The same through a write that was only logged: a daemon that starts on a read-only state
    /// folder after `off`'s configured `enabled` changed drops the old choice but cannot write
    /// that. A reload that changes the value back must write the file (or fail) first: it used to
    /// run `off` while the stale file said "disabled, configured true", and the next daemon
    /// disabled it again.
    @Test(.enabled(if: rootTestsEnabled, "needs root: a read-only bind mount of the state folder"))
    func aReloadAfterAFailedWriteAtTheStartWritesFirst() async throws {
        let configured: (Bool) -> String = { enabled in
            shellWorker("on", "exec sleep 1000") + shellWorker("off", "exec sleep 1000", extra: "enabled = \(enabled)")
        }
        try await DaemonFixture.with(configured(true)) { fixture in
            try await fixture.call("Disable", "s", ["off"])
            try await fixture.stopDaemon()
            let folder = fixture.stateDirectory
            try await runChecked(["mount", "--bind", folder, folder])
            fixture.atTeardown { runBlocking(["umount", "-l", folder]) }
            try await runChecked(["mount", "-o", "remount,bind,ro", folder])
            try fixture.writeConfiguration(configured(false))
            try await fixture.startDaemon()

            try fixture.writeConfiguration(configured(true))
            let reload = try await fixture.dbusSend("Reload")
            #expect(reload.output.contains("Error \(Self.stateNotSaved)"), "\(reload.output)")
            let before = try await fixture.worker("off")
            #expect(before.state == "disabled" && !before.enabled, "\(before)")

            try await runChecked(["umount", folder])
            try await fixture.stopDaemon(signal: SIGKILL)
            try await fixture.startDaemon()
            let after = try await fixture.worker("off")
            #expect(after.enabled == before.enabled && after.state == before.state, "before the restart \(before), after \(after)")
        }
    }

    /// Disable of a running worker and Enable of a disabled one are both refused and change
    /// nothing, then and after a restart of the daemon.
    static func expectNothingChanges(_ fixture: DaemonFixture, systemError: String) async throws {
        let path = fixture.stateDirectory + "/enable-state"
        let pid = try await fixture.worker("on").pid
        let message = try await expectRefused(fixture, "Disable", "on", pathInMessage: path)
        #expect(message.contains(systemError), "\(message)")
        try await expectRefused(fixture, "Enable", "off", pathInMessage: path)
        let on = try await fixture.worker("on")
        #expect(on.state == "running" && on.pid == pid && on.enabled)
        let off = try await fixture.worker("off")
        #expect(off.state == "disabled" && !off.enabled)
        #expect(try await fixture.property("Enabled", worker: "off").bool == false)

        // Stop, which the refusal points to, needs no disk; it is not persisted either, so the
        // restart below runs `on` again.
        try await fixture.call("Stop", "s", ["on"])
        #expect(try await fixture.worker("on").state == "stopped")
        #expect(kill(-pid_t(pid), 0) == -1 && errno == ESRCH, "its process group is gone")

        try await fixture.stopDaemon()
        try await fixture.startDaemon()
        #expect(try await fixture.worker("on").state == "running")
        #expect(try await fixture.worker("off").state == "disabled")
    }

    /// Calls `member` on `worker`; expects StateNotSaved with no WorkerStateChanged and no
    /// PropertiesChanged before the reply; returns the error's message.
    @discardableResult
    static func expectRefused(_ fixture: DaemonFixture, _ member: String, _ worker: String, pathInMessage path: String) async throws -> String {
        let monitor = try await fixture.monitor()
        let daemon = try await fixture.daemonUniqueName()
        let result = try await fixture.dbusSend(member, ["string:\(worker)"])
        #expect(result.output.contains("Error \(stateNotSaved)"), "\(member) \(worker): \(result.output)")
        #expect(result.output.contains(path) && result.output.contains("Stop"), "\(result.output)")
        var seen: [String] = []
        while let message = try await monitor.next(timeout: .seconds(10)) {
            if message.type == "signal", message.sender == daemon { seen.append("\(message)") }
            if message.type == "error", message.sender == daemon { break }
        }
        #expect(seen.isEmpty, "signals before the refusal: \(seen)")
        await monitor.stop()
        return result.output
    }
}
