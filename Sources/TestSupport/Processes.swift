import CShims
import Foundation
import Glibc

/// Waits until a process that is not our child (e.g. a daemon's grandchild) has exited, using a
/// pidfd (readable when the process is gone; it works for any pid, unlike `waitpid`). Returns at
/// once when no such process exists. Throws after `timeout`.
public func waitForProcessExit(pid: pid_t, timeout: Duration = .seconds(10)) async throws {
    let fd = _bgw_pidfd_open(pid, 0)
    guard fd >= 0 else { return }  // ESRCH: already gone
    defer { close(fd) }
    let ready = try await awaitReadable(fd, timeout: timeout)
    guard ready else { throw TestProcessError("process \(pid) did not exit within \(timeout)") }
}

/// The direct children of `pid` (every thread's), from `/proc/PID/task/TID/children`.
public func childPids(of pid: pid_t) -> [pid_t] {
    let taskDir = "/proc/\(pid)/task"
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: taskDir)) ?? []
    return tasks.flatMap { tid -> [pid_t] in
        guard let text = try? String(contentsOfFile: "\(taskDir)/\(tid)/children", encoding: .utf8) else { return [] }
        return text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}

/// Runs a command to completion on the calling thread; returns its exit code (128+signal when
/// killed). For synchronous clean-up (`deinit`), where `run` (async) cannot be awaited.
@discardableResult
public func runBlocking(_ argv: [String]) -> Int32 {
    guard let child = try? ChildProcess(argv, captureStdout: false, captureStderr: false) else { return 127 }
    let status = child.waitBlocking()
    return WaitStatus.exitCode(status) ?? 128 + (WaitStatus.signal(status) ?? 0)
}

/// Runs a command that must succeed; throws with its stderr otherwise. Returns its stdout.
@discardableResult
public func runChecked(
    _ argv: [String], environment: [String: String] = [:], timeout: Duration = .seconds(30)
) async throws -> String {
    let r = try await run(argv, environment: environment, timeout: timeout)
    guard r.status == 0 else {
        throw TestProcessError("`\(argv.joined(separator: " "))` exited with \(r.status): \(r.stderr)")
    }
    return r.stdout
}

/// A short random hex id for names that must not collide between tests running in parallel
/// (network namespaces, cgroups, bus names).
public func uniqueID(_ length: Int = 8) -> String {
    String(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(length))
}

/// An async `defer`: runs `body` with `resource`, then `cleanup`, whether `body` returned or
/// threw; for test fixtures that must be torn down (processes, namespaces) even when a test fails.
public func withCleanup<Resource, Result>(
    _ resource: Resource, cleanup: (Resource) async -> Void, _ body: (Resource) async throws -> Result
) async throws -> Result {
    let result: Result
    do {
        result = try await body(resource)
    } catch {
        await cleanup(resource)
        throw error
    }
    await cleanup(resource)
    return result
}

/// Whether tests that need root should run: as root, or in CI (`CI=true`), where they must run
/// and fail loudly if root is missing rather than skip.
public var rootTestsEnabled: Bool { isRoot || isCI }

func milliseconds(_ d: Duration) -> Int32 {
    let c = d.components
    return Int32(clamping: c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000)
}

/// Live (not zombie) processes of process group `pgid`, from /proc. A zombie whose parent died
/// waits for its reaper (PID 1 of the namespace), which may never come in a test container.
public func liveMembers(ofGroup pgid: pid_t) -> [pid_t] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { pid_t($0) }.filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 2 && fields[0] != "Z" && fields[0] != "X" && pid_t(fields[2]) == pgid
    }
}
