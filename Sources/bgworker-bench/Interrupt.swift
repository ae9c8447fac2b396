// Ctrl-C (SIGINT) or SIGTERM in the middle of a run: the bench's children (daemons, buses,
// keepalived, a systemd namespace) must not outlive it, nor its folders. Normal ends clean up
// through each fixture's own stop; this is for the abrupt one.
import CShims
import Foundation
import Glibc
import Synchronization
import TestSupport

enum Interrupt {
    /// Folders to remove on an interrupt (the fixtures remove them themselves otherwise).
    private static let folders = Mutex<Set<String>>([])
    /// Network namespaces to delete on an interrupt (`ip netns del`).
    private static let namespaces = Mutex<Set<String>>([])

    // The write end of the pipe the signal handler writes to. Set once in `install()`, before the
    // handler is installed, and never changed; the handler only reads it (and write(2) is
    // async-signal-safe), so no data race is possible.
    nonisolated(unsafe) private static var pipeWrite: Int32 = -1

    /// Installs handlers for SIGINT and SIGTERM that wake a cleanup thread.
    static func install() {
        var fds: [Int32] = [-1, -1]
        guard _bgw_pipe_cloexec(&fds) == 0 else { return }
        pipeWrite = fds[1]
        let reader = fds[0]
        let thread = Thread {
            var signal: UInt8 = 0
            while read(reader, &signal, 1) < 0 && errno == EINTR {}
            cleanUpAndExit(Int32(signal))
        }
        thread.name = "bench-interrupt"
        thread.start()
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { sig in
            var byte = UInt8(truncatingIfNeeded: sig)
            _ = write(Interrupt.pipeWrite, &byte, 1)
        }
        sigemptyset(&action.sa_mask)
        sigaction(SIGINT, &action, nil)
        sigaction(SIGTERM, &action, nil)
    }

    /// A fresh temporary folder that an interrupt removes too.
    static func directory(prefix: String) throws -> TemporaryDirectory {
        let directory = try TemporaryDirectory(prefix: prefix)
        register(directory.path)
        return directory
    }

    static func register(_ folder: String) { _ = folders.withLock { $0.insert(folder) } }

    static func registerNetworkNamespace(_ name: String) { _ = namespaces.withLock { $0.insert(name) } }

    /// SIGTERM to every child and its process group (a daemon stops its workers), SIGKILL to
    /// grandchildren that are PID 1 of a namespace of ours (systemd, keepalived under unshare);
    /// waits up to 10 s on pidfds, removes the folders and network namespaces, exits 128 + signal.
    private static func cleanUpAndExit(_ signal: Int32) -> Never {
        FileHandle.standardError.write(Data("bench: interrupted (signal \(signal)); stopping what it started\n".utf8))
        let children = childPids(of: getpid())
        var pidfds: [Int32] = []
        for child in children {
            let fd = _bgw_pidfd_open(child, 0)
            if fd >= 0 { pidfds.append(fd) }
            for grandchild in childPids(of: child) where isNamespaceInit(grandchild) { kill(grandchild, SIGKILL) }
            kill(-child, SIGTERM)
            kill(child, SIGTERM)
        }
        let deadline = ContinuousClock.now + .seconds(10)
        for fd in pidfds {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = deadline - ContinuousClock.now
            let ms = Int32(max(0, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            _ = poll(&entry, 1, ms)
        }
        for folder in folders.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: folder) }
        for name in namespaces.withLock({ $0 }) where FileManager.default.fileExists(atPath: "/run/netns/\(name)") {
            runBlocking(["ip", "netns", "del", name])
        }
        _exit(128 + signal)
    }

    /// Whether `pid` is PID 1 of a PID namespace (its NSpid line has a last field of 1).
    private static func isNamespaceInit(_ pid: pid_t) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") })
        else { return false }
        let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
        return fields.count > 2 && fields.last == "1"
    }
}
