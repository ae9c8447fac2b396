import CShims
import Foundation
import Glibc
import Testing
import TestSupport

/// `_bgw_environ_value`, by which the runner attributes an orphan to its worker
/// (docs/process-runner.md "Processes that leave the session"). An empty /proc/PID/environ is
/// what a process in the middle of an execve shows (its new environment is not set up yet): it
/// must not read as "no BGWORKER_NAME", which the runner would keep for that pid for good.
@Suite struct EnvironValueTests {
    /// The shim's answer for a `sleep` started with `environment`, and the value it copied.
    static func value(with environment: [String: String]) async throws -> (Int, String) {
        let process = try ChildProcess(["/bin/sleep", "1000"], environment: environment, captureStdout: false)
        defer {
            process.signal(SIGKILL)
            _ = process.waitBlocking()
        }
        // posix_spawn returns once the child's new memory is in place, which is before the kernel
        // copies argv and the environment in (the very window of this shim's -3): wait until
        // its cmdline, set up with the environment, reads.
        try await waitUntil("the child's execve done", timeout: .seconds(10)) {
            ((try? String(contentsOfFile: "/proc/\(process.pid)/cmdline", encoding: .utf8)) ?? "").hasPrefix("/bin/sleep")
        }
        var buffer = [CChar](repeating: 0, count: 64)
        let length = _bgw_environ_value(process.pid, "BGWORKER_NAME=", &buffer, buffer.count)
        let copied = length > 0 ? String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        return (length, copied)
    }

    @Test func anEmptyEnvironmentIsNotReadAsOneWithoutTheName() async throws {
        #expect(try await Self.value(with: [:]).0 == -3)
    }

    @Test func anEnvironmentWithoutTheNameSaysSo() async throws {
        #expect(try await Self.value(with: ["A": "1"]).0 == -1)
    }

    @Test func theNameIsRead() async throws {
        let (length, copied) = try await Self.value(with: ["A": "1", "BGWORKER_NAME": "w1", "Z": "2"])
        #expect(length == 2 && copied == "w1")
    }
}
