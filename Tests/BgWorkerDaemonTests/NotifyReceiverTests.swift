import BgWorkerCore
import Foundation
import Glibc
import TestSupport
import Testing

@testable import BgWorkerDaemon

/// The daemon's notify socket against senders no one here wrote: a raw python3 datagram sender,
/// systemd 252's `systemd-notify`, and a C program linked with libsystemd's `sd_notify`.
@Suite struct NotifyReceiverTests {
    /// A receiver bound in a fresh directory (searchable by every user, for the uid test).
    private final class Fixture {
        let directory: TemporaryDirectory
        let receiver: NotifyReceiver

        init() throws {
            directory = try TemporaryDirectory(prefix: "bgw-notify")
            chmod(directory.path, 0o755)
            receiver = try NotifyReceiver(path: directory.file("notify"))
        }

        deinit {
            receiver.close()
            directory.remove()
        }

        /// The next datagram, waiting for readability (poll) up to `timeout`.
        func next(timeout: Duration = .seconds(10)) async throws -> NotifyDatagram {
            let deadline = ContinuousClock.now + timeout
            while true {
                if let datagram = receiver.receive() { return datagram }
                let left = deadline - ContinuousClock.now
                guard left > .zero, try await awaitReadable(receiver.fd, timeout: left) else {
                    throw TestProcessError("no datagram on \(receiver.path) within \(timeout)")
                }
            }
        }

        /// Runs a python3 script with the socket's path as argv[1]; stdout is captured.
        func python(_ script: String, prefix: [String] = []) throws -> ChildProcess {
            try ChildProcess(prefix + ["/usr/bin/python3", "-c", script, receiver.path])
        }
    }

    private static let rawSender = """
        import socket, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(sys.argv[1])
        for text in sys.argv[2:] or ["READY=1\\nSTATUS=raw python"]:
            s.send(text.encode())
        print("sent", flush=True)
        """

    private func message(_ datagram: NotifyDatagram) -> (pid: Int32, uid: UInt32, NotifyMessage)? {
        if case .message(let pid, let uid, let message) = datagram { return (pid, uid, message) }
        return nil
    }

    @Test func socketIsBoundWritableByAllAndUnlinkedOnClose() throws {
        let directory = try TemporaryDirectory(prefix: "bgw-notify")
        defer { directory.remove() }
        let path = directory.file("notify")
        // A stale socket from a dead daemon is replaced.
        let stale = try NotifyReceiver(path: path)
        let receiver = try NotifyReceiver(path: path)
        var status = stat()
        #expect(stat(path, &status) == 0)
        #expect(status.st_mode & S_IFMT == S_IFSOCK)
        #expect(status.st_mode & 0o777 == 0o666)
        let flags = fcntl(receiver.fd, F_GETFL)
        #expect(flags & O_NONBLOCK != 0)
        #expect(fcntl(receiver.fd, F_GETFD) & FD_CLOEXEC != 0)
        var on: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        #expect(getsockopt(receiver.fd, SOL_SOCKET, SO_PASSCRED, &on, &length) == 0 && on == 1)
        #expect(receiver.receive() == nil)  // nothing waiting: nil at once, never blocks
        // The replaced receiver's close leaves the new socket's path alone.
        stale.close()
        #expect(access(path, F_OK) == 0)
        receiver.close()
        #expect(access(path, F_OK) != 0)
        receiver.close()  // idempotent
        #expect(receiver.receive() == nil)
    }

    @Test func aFileThatIsNotASocketIsNotReplaced() throws {
        let directory = try TemporaryDirectory(prefix: "bgw-notify")
        defer { directory.remove() }
        let path = directory.file("notify")
        FileManager.default.createFile(atPath: path, contents: Data("precious".utf8))
        #expect(throws: SystemCallError.self) { _ = try NotifyReceiver(path: path) }
        #expect(FileManager.default.contents(atPath: path) == Data("precious".utf8))
        #expect(throws: SystemCallError.self) { _ = try NotifyReceiver(path: "/" + String(repeating: "x", count: 120)) }
    }

    @Test func aPathThatCannotBeBoundSaysWhy() throws {
        func refusal(_ path: String) -> SystemCallError? {
            do {
                _ = try NotifyReceiver(path: path)
                return nil
            } catch {
                return error
            }
        }
        let long = try #require(refusal("/" + String(repeating: "x", count: 107)))
        #expect(long.errno == ENAMETOOLONG && long.call.hasSuffix("(108 bytes, at most 107)"), "\(long)")
        #expect(refusal("@abstract")?.errno == EINVAL)
        #expect(refusal("/tmp/a\0b")?.errno == EINVAL)
        #expect(refusal("")?.errno == EINVAL)
    }

    @Test func rawPythonSenderIsAttributedToItsPid() async throws {
        let fixture = try Fixture()
        let sender = try fixture.python(Self.rawSender)
        defer { Task { await sender.terminate() } }
        let received = try #require(message(try await fixture.next()))
        #expect(received.pid == sender.pid)
        #expect(received.uid == geteuid())
        var expected = NotifyMessage()
        expected.ready = true
        expected.status = "raw python"
        #expect(received.2 == expected)
        #expect(try await sender.readLine() == "sent")
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root to run the sender as another user"))
    func aSenderOfAnotherUserCanSendAndItsUidIsReported() async throws {
        let fixture = try Fixture()
        let sender = try fixture.python(
            Self.rawSender, prefix: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        defer { Task { await sender.terminate() } }
        let received = try #require(message(try await fixture.next()))
        #expect(received.uid == 65534)
        #expect(received.pid == sender.pid)
        #expect(received.2.ready)
    }

    /// systemd 252's systemd-notify, as root, sends READY=1 with its *parent's* pid in the
    /// credentials (so that a shell worker's own pid is the sender), then a BARRIER=1 datagram with
    /// its own pid and a pipe end, and waits up to 5 s for that to close before it exits 0.
    @Test func systemdNotifyFromAShellIsAttributedAndReturnsPromptly() async throws {
        let fixture = try Fixture()
        let shell = try ChildProcess(
            ["/bin/sh", "-c", "echo \"sh $$\"; systemd-notify --ready --status='from shell'; echo \"rc $?\""],
            extraEnvironment: ["NOTIFY_SOCKET": fixture.receiver.path])
        defer { Task { await shell.terminate() } }
        #expect(try await shell.readLine() == "sh \(shell.pid)")

        let started = ContinuousClock.now
        let ready = try #require(message(try await fixture.next()))
        // systemd-notify is alive until we close its barrier fd: the shell's only child.
        let children = childrenOf(shell.pid)
        #expect(children.count == 1)
        // The shell's pid (root: systemd-notify passes its parent's), or systemd-notify's own.
        #expect(ready.pid == shell.pid || children.contains(ready.pid), "attributed to \(ready.pid), shell \(shell.pid)")
        var expected = NotifyMessage()
        expected.ready = true
        expected.status = "from shell"
        #expect(ready.2 == expected)

        let barrier = try #require(message(try await fixture.next()))
        #expect(barrier.2.barrier)
        #expect(barrier.pid == shell.pid || children.contains(barrier.pid))
        // Its fd was closed by receive(): systemd-notify ends well within its 5 s barrier timeout.
        #expect(try await shell.readLine(timeout: .seconds(4)) == "rc 0")
        _ = try await shell.waitForExit(timeout: .seconds(4))
        #expect(ContinuousClock.now - started < .seconds(4))
    }

    @Test func cProgramWithLibsystemdSdNotify() async throws {
        let fixture = try Fixture()
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/sd-notify-sender.c").path
        let binary = fixture.directory.file("sd-notify-sender")
        let compiler = try ChildProcess(["cc", "-o", binary, source, "-lsystemd"], captureStderr: true)
        let compiled = try await compiler.waitForExit(timeout: .seconds(60))
        let diagnostic = WaitStatus.exitCode(compiled) == 0 ? "" : (try await compiler.readErrorLine() ?? "")
        try #require(WaitStatus.exitCode(compiled) == 0, "cc failed: \(diagnostic)")

        let sender = try ChildProcess([binary], extraEnvironment: ["NOTIFY_SOCKET": fixture.receiver.path])
        defer { Task { await sender.terminate() } }
        #expect(try await sender.readLine() == "pid \(sender.pid)")
        let ready = try #require(message(try await fixture.next()))
        #expect(ready.pid == sender.pid)
        #expect(ready.2.ready && ready.2.status == "from C via sd_notify")
        #expect(try await sender.readLine() == "sd_notify 1")
        let barrier = try #require(message(try await fixture.next()))
        #expect(barrier.pid == sender.pid && barrier.2.barrier)
        // Non-negative: the barrier's fd was closed (libsystemd 252 returns 1; a timeout, -ETIMEDOUT, after 5 s).
        let barrierResult = try await sender.readLine(timeout: .seconds(4))
        #expect(barrierResult == "sd_notify_barrier 1" || barrierResult == "sd_notify_barrier 0")
        #expect(WaitStatus.exitCode(try await sender.waitForExit()) == 0)
    }

    @Test func oversizedDatagramIsRefusedAndTheNextOneStillCounts() async throws {
        let fixture = try Fixture()
        let sender = try fixture.python("""
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(sys.argv[1])
            s.send(b"STATUS=" + b"x" * 4090)          # 4097 bytes
            s.send(b"READY=1\\nSTATUS=" + b"y" * 4081)  # 4096 bytes
            s.send(b"STATUS=" + b"z" * 100000)
            s.send(b"READY=1\\0\\0")
            s.send(b"BARRIER=1\\nREADY=1")
            s.send(b"WATCHDOG=1")
            print("sent", flush=True)
            """)
        defer { Task { await sender.terminate() } }
        #expect(try await fixture.next() == .refused(pid: sender.pid, reason: "datagram of 4097 bytes, over 4096"))
        let full = try #require(message(try await fixture.next()))
        #expect(full.2.ready && full.2.status == String(repeating: "y", count: 4081))
        #expect(try await fixture.next() == .refused(pid: sender.pid, reason: "datagram of 100007 bytes, over 4096"))
        #expect(try await fixture.next() == .refused(pid: sender.pid, reason: "NUL byte at offset 7"))
        #expect(try await fixture.next() == .refused(pid: sender.pid, reason: "BARRIER=1 with 1 other line"))
        #expect(message(try await fixture.next())?.2.watchdogPing == true)
        #expect(try await sender.readLine() == "sent")
    }

    /// The sender passes pipe write ends and polls the read ends: POLLHUP there means our copy
    /// was closed too (the sender closed its own right after sending).
    @Test func fileDescriptorsAreClosedAtOnceAndRefusedUnlessABarrier() async throws {
        let fixture = try Fixture()
        let sender = try fixture.python("""
            import socket, sys, os, select
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(sys.argv[1])
            def send(text, count):
                pipes = [os.pipe() for _ in range(count)]
                s.sendmsg([text], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes().join(w.to_bytes(4, sys.byteorder) for _, w in pipes))])
                for _, w in pipes: os.close(w)
                for r, _ in pipes:
                    p = select.poll(); p.register(r, select.POLLIN)
                    events = p.poll(10000)
                    print("hup" if events and events[0][1] & select.POLLHUP else "open", flush=True)
            send(b"READY=1\\nSTATUS=with an fd", 1)
            send(b"BARRIER=1", 1)
            send(b"BARRIER=1", 2)
            send(b"WATCHDOG=1", 253)
            s.send(b"BARRIER=1")
            print("done", flush=True)
            """)
        defer { Task { await sender.terminate() } }
        #expect(try await fixture.next() == .refused(pid: sender.pid, reason: "carries 1 file descriptor"))
        #expect(try await sender.readLine() == "hup")
        var barrier = NotifyMessage()
        barrier.barrier = true
        #expect(try await fixture.next() == .message(pid: sender.pid, uid: geteuid(), barrier))
        #expect(try await sender.readLine() == "hup")
        #expect(try await fixture.next() == .refused(pid: sender.pid, reason: "carries 2 file descriptors"))
        for _ in 0..<2 { #expect(try await sender.readLine() == "hup") }
        #expect(try await fixture.next() == .refused(pid: sender.pid, reason: "carries 253 file descriptors"))
        for _ in 0..<253 { #expect(try await sender.readLine() == "hup") }
        // A BARRIER=1 without its fd says nothing harmful: a message like any other.
        #expect(try await fixture.next() == .message(pid: sender.pid, uid: geteuid(), barrier))
        #expect(try await sender.readLine() == "done")
    }

    /// 100,000 datagrams from a blocking sender (as sd_notify's socket is): the kernel holds the
    /// sender while our queue is full, so every one arrives; receive() drains without a crash.
    @Test func floodOfDatagramsLosesNothingTheKernelKept() async throws {
        let fixture = try Fixture()
        let count = 100_000
        let sender = try fixture.python("""
            import socket, sys, os
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(sys.argv[1])
            n = int(sys.argv[2])
            for i in range(n):
                if i % 1000 == 999:
                    r, w = os.pipe()
                    s.sendmsg([b"READY=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, w.to_bytes(4, sys.byteorder))])
                    os.close(r); os.close(w)
                else:
                    s.send(b"WATCHDOG=1\\nSTATUS=%d" % i)
            print("sent", n, flush=True)
            """.replacingOccurrences(of: "sys.argv[2]", with: "\(count)"))
        defer { Task { await sender.terminate() } }
        var pings = 0, refused = 0, last = -1, inOrder = true
        let deadline = ContinuousClock.now + .seconds(120)
        while pings + refused < count {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { break }
            switch try await fixture.next(timeout: left) {
            case .message(_, _, let message):
                pings += 1
                if let status = message.status, let index = Int(status) {
                    if index <= last { inOrder = false }
                    last = index
                }
            case .refused(_, let reason):
                #expect(reason == "carries 1 file descriptor")
                refused += 1
            }
        }
        #expect(pings == count - count / 1000)
        #expect(refused == count / 1000)
        #expect(inOrder)
        #expect(try await sender.readLine(timeout: .seconds(30)) == "sent \(count)")
        #expect(fixture.receiver.receive() == nil)
        // The 100 fds that came along were closed: the fd tests above see each one's POLLHUP (a
        // count of this process's fds is no proof while other suites run beside this one).
    }

    private func childrenOf(_ pid: Int32) -> [Int32] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

}
