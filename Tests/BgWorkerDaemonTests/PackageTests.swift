import BgWorkerCore
import Foundation
import Glibc
import TestSupport
import Testing

/// The Debian package as an admin uses it (issue 13), and the release programs in it. Both use
/// what `scripts/package` built (`scripts/test` builds it first under CI=true): the release
/// programs in `.build/release` and `.build/package/bgworker_VERSION_amd64.deb`. Outside CI,
/// without them, the tests skip and say how to build them.
enum PackageFiles {
    static let root = repositoryRoot()
    static let releaseDirectory = "\(root)/.build/release"
    static let deb = "\(root)/.build/package/bgworker_\(bgworkerVersion)_amd64.deb"
    static let programs = ["bgworkerd", "bgworkerctl", "bgworker-example", "bgworker-ha-sim"]
    static var built: Bool { FileManager.default.fileExists(atPath: deb) }
    static let notBuilt: Comment = "needs scripts/package (the release build and the .deb) first"
}

@Suite struct ReleaseBuildTests {
    /// `--static-swift-stdlib`: the programs run where the toolchain is not. ldd lists only the
    /// system's libraries (libc, libdbus-1, libsystemd and what they load, libstdc++), nothing
    /// of Swift's and nothing under /opt; no RUNPATH names the toolchain.
    @Test(.enabled(if: PackageFiles.built || isCI, PackageFiles.notBuilt))
    func releaseProgramsLinkOnlySystemLibraries() async throws {
        let system: Set<String> = [
            "linux-vdso.so.1", "ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1",
            "libdbus-1.so.3", "libsystemd.so.0",
            // What libsystemd loads on Debian 12.
            "libcap.so.2", "libgcrypt.so.20", "libgpg-error.so.0", "liblz4.so.1", "liblzma.so.5", "libzstd.so.1",
        ]
        for program in PackageFiles.programs {
            let path = "\(PackageFiles.releaseDirectory)/\(program)"
            let ldd = try await run(["ldd", path])
            #expect(ldd.status == 0, "ldd \(program): \(ldd.stderr)")
            let libraries = ldd.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            let names = Set(libraries.compactMap { $0.split(separator: " ").first.map(String.init) }
                .map { ($0 as NSString).lastPathComponent })
            #expect(names.isSubset(of: system), "\(program) links \(names.subtracting(system).sorted()):\n\(ldd.stdout)")
            #expect(names.contains("libdbus-1.so.3") && names.contains("libc.so.6"), "\(ldd.stdout)")
            #expect(!ldd.stdout.contains("not found") && !ldd.stdout.contains("/opt/"), "\(ldd.stdout)")
            let dynamic = try await run(["readelf", "-d", path])
            #expect(!dynamic.stdout.contains("/opt/swift"), "\(program): \(dynamic.stdout)")
            let version = try await run([path, "--version"])
            #expect(version.stdout == bgworkerVersion, "\(program) --version: \(version.stdout) \(version.stderr)")
        }
    }
}

extension SystemdNamespaceTests {
    /// `apt-get install ./bgworker_VERSION_amd64.deb` into a systemd 252, PID 1 of a namespace
    /// whose /etc, /usr and /var are copy-on-write (`installable`), and then what an admin does:
    /// start, drive with bgworkerctl as root, as a member of bgworker-admin and as someone else,
    /// reload, stop (it stays stopped), remove, purge. After the purge the namespace's overlays
    /// hold nothing of the package's: every file it or its scripts created is gone.
    @Suite("Package: install, use, purge under systemd", .timeLimit(.minutes(5)))
    struct PackageInstallTests {
        @Test(.enabled(if: rootTestsEnabled && (PackageFiles.built || isCI),
                       "needs root (a systemd of its own) and scripts/package's .deb"))
        func installRunReloadStopRemovePurge() async throws {
            let deb = PackageFiles.deb
            try await SystemdNamespace.with(installable: true) { ns in
                func inside(_ argv: [String], timeout: Duration = .seconds(60)) async throws -> (status: Int32, stdout: String, stderr: String) {
                    try await ns.run(inside: ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8"] + argv, timeout: timeout)
                }
                func checked(_ argv: [String], timeout: Duration = .seconds(60)) async throws -> String {
                    let r = try await inside(argv, timeout: timeout)
                    guard r.status == 0 else {
                        throw TestProcessError("\(argv.joined(separator: " ")): exit \(r.status)\n\(r.stdout)\n\(r.stderr)")
                    }
                    return r.stdout
                }
                // What the namespace's own start wrote into the overlays, to tell the package's apart.
                let leftoverScript = """
                    cd /run/bgw-overlay && find etc/upper usr/upper var/upper -mindepth 1 ! -type d \
                      | grep -vE '^var/upper/(log|cache|lib/dpkg|lib/apt)/' | grep -vE '^etc/upper/(group-?|gshadow-?|\\.pwd\\.lock)$' | sort
                    find /etc/systemd/system /usr/lib/systemd/system -mindepth 1 | sort
                    """
                let before = try await checked(["bash", "-c", leftoverScript])
                // Rewritten by the group's creation and removal (so in the overlay): compared whole.
                let groupBefore = try await checked(["cat", "/etc/group", "/etc/gshadow"])

                // Install: the group exists before the bus policy that names it is read.
                let install = try await checked(["apt-get", "install", "-y", "--no-install-recommends", deb], timeout: .seconds(180))
                #expect(!install.contains("Unknown group"), "\(install)")
                let group = try await checked(["getent", "group", "bgworker-admin"])
                let gid = try #require(group.split(separator: ":").dropFirst(2).first.map(String.init))
                #expect(try await checked(["cat", "/etc/bgworker/bgworkerd.toml"]).contains("\nsource = \"none\""))

                // Start (postinst may have started it already: then this is a no-op) and the
                // installed configuration: no worker, no HA source, the systemd runner.
                _ = try await checked(["systemctl", "start", "bgworkerd"])
                let status = try await checked(["bgworkerctl", "status"])
                #expect(status.contains("Runner: systemd") && status.contains("HA role: standalone"), "\(status)")
                #expect(try await checked(["bgworkerctl", "list"]).split(separator: "\n").count <= 1)

                // A worker as an admin adds one; `bgworkerctl reload` replies once it is applied.
                _ = try await checked(["bash", "-c", """
                    printf '[worker.probe]\\nexec = ["/usr/libexec/bgworker/bgworker-example"]\\nrun-on = "any"\\nuser = "nobody"\\n' \
                      >/etc/bgworker/workers.d/50-probe.toml
                    """])
                _ = try await checked(["bgworkerctl", "reload"])
                let probe = try await checked(["bgworkerctl", "status", "probe"])
                #expect(probe.contains("State: running") || probe.contains("State: starting"), "\(probe)")
                #expect(try await checked(["systemctl", "is-active", "bgworker-probe.service"]).hasPrefix("active"))

                // As a member of bgworker-admin, and as nobody else: the bus policy and the daemon agree.
                let admin = ["setpriv", "--reuid=65534", "--regid=65534", "--groups=\(gid)"]
                let stranger = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                _ = try await checked(admin + ["bgworkerctl", "stop", "probe"])
                #expect(try await checked(admin + ["bgworkerctl", "status", "probe"]).contains("State: stopped"))
                _ = try await checked(admin + ["bgworkerctl", "start", "probe"])
                // Disable and enable are persisted: the hardened unit may write its state directory.
                _ = try await checked(admin + ["bgworkerctl", "disable", "probe"])
                #expect(try await checked(["ls", "/var/lib/bgworker"]).isEmpty == false)
                _ = try await checked(admin + ["bgworkerctl", "enable", "probe"])
                let refused = try await inside(stranger + ["bgworkerctl", "restart", "probe"])
                #expect(refused.status == 1 && refused.stderr.contains("needs root or membership in group `bgworker-admin`"), "\(refused)")
                #expect(try await checked(stranger + ["bgworkerctl", "list"]).contains("probe"))
                let logs = try await inside(stranger + ["bgworkerctl", "logs", "probe"])
                #expect(logs.status == 0, "anyone may read a worker's logs: \(logs)")

                // systemctl reload (SIGHUP): a second worker appears; `watch` sees it start.
                let watch = try ChildProcess(ns.nsenterArguments(["bgworkerctl", "watch"]), captureStdout: true,
                                             logFile: ns.directory.file("watch.log"))
                _ = try await watch.readLine(until: { $0.contains("owner :") }, timeout: .seconds(20))
                _ = try await checked(["bash", "-c", """
                    printf '[worker.late]\\nexec = ["/usr/libexec/bgworker/bgworker-example"]\\nrun-on = "any"\\n' \
                      >/etc/bgworker/workers.d/60-late.toml
                    """])
                _ = try await checked(["systemctl", "reload", "bgworkerd"])
                _ = try await watch.readLine(until: { $0.contains("worker late: running") }, timeout: .seconds(30))

                // systemctl stop: the daemon stops its workers and exits, and stays stopped: a
                // client's call does not start it again (no bus activation), nothing restarts it.
                _ = try await checked(["systemctl", "stop", "bgworkerd"])
                _ = try await watch.readLine(until: { $0.contains("owner none") }, timeout: .seconds(30))
                await watch.terminate(grace: .seconds(2))
                let after = try await inside(["bgworkerctl", "status"])
                #expect(after.status != 0, "bgworkerctl status after stop: \(after)")
                let state = try await inside(["systemctl", "is-active", "bgworkerd", "bgworker-probe.service", "bgworker-late.service"])
                #expect(state.stdout.split(separator: "\n") == ["inactive", "inactive", "inactive"], "\(state.stdout)")

                // The process runner with the shipped drop-in: its workers are the daemon's
                // children, and the drop-in gives them back what the hardened unit took (here:
                // switching to the worker's user, which needs CAP_SETUID and CAP_SETGID).
                _ = try await checked(["bash", "-c", """
                    set -e
                    mkdir -p /etc/systemd/system/bgworkerd.service.d
                    cp /usr/share/doc/bgworker/examples/process-runner.conf /etc/systemd/system/bgworkerd.service.d/
                    sed -i 's/^# runner = "auto" .*/runner = "process"/' /etc/bgworker/bgworkerd.toml
                    grep -q '^runner = "process"' /etc/bgworker/bgworkerd.toml
                    systemctl daemon-reload
                    """])
                _ = try await checked(["systemctl", "start", "bgworkerd"])
                let processStatus = try await checked(["bgworkerctl", "status"])
                #expect(processStatus.contains("Runner: process"), "\(processStatus)")
                let processProbe = try await checked(["bgworkerctl", "--json", "status", "probe"])
                let json = try #require(try JSONSerialization.jsonObject(with: Data(processProbe.utf8)) as? [String: Any])
                #expect(json["state"] as? String == "running", "\(processProbe)")
                let pid = try #require(json["pid"] as? Int)
                let owner = try await checked(["ps", "-o", "user=", "-p", "\(pid)"])
                #expect(owner.trimmingCharacters(in: .whitespacesAndNewlines) == "nobody", "probe runs as \(owner)")
                _ = try await checked(["systemctl", "stop", "bgworkerd"])
                #expect(try await inside(["test", "-e", "/proc/\(pid)"]).status != 0, "the worker outlived the daemon")
                _ = try await checked(["rm", "-r", "/etc/systemd/system/bgworkerd.service.d"])
                _ = try await checked(["systemctl", "daemon-reload"])

                // Remove keeps the configuration; purge removes it, the state and the group. The
                // admin's own drop-ins are the admin's to remove.
                _ = try await checked(["apt-get", "remove", "-y", "bgworker"], timeout: .seconds(120))
                #expect(try await inside(["test", "-e", "/usr/bin/bgworkerd"]).status != 0)
                #expect(try await inside(["test", "-e", "/etc/bgworker/bgworkerd.toml"]).status == 0)
                _ = try await checked(["rm", "/etc/bgworker/workers.d/50-probe.toml", "/etc/bgworker/workers.d/60-late.toml"])
                _ = try await checked(["apt-get", "purge", "-y", "bgworker"], timeout: .seconds(120))
                let dpkg = try await inside(["dpkg-query", "-W", "-f=${Status}", "bgworker"])
                #expect(dpkg.status != 0 || dpkg.stdout.contains("not-installed"), "\(dpkg)")
                for path in ["/etc/bgworker", "/var/lib/bgworker", "/run/bgworker", "/usr/share/doc/bgworker",
                             "/usr/share/dbus-1/system.d/org.example.BgWorker.conf"] {
                    #expect(try await inside(["test", "-e", path]).status != 0, "\(path) is left")
                }
                #expect(try await inside(["getent", "group", "bgworker-admin"]).status != 0)
                #expect(try await checked(["cat", "/etc/group", "/etc/gshadow"]) == groupBefore)
                let leftovers = try await checked(["bash", "-c", leftoverScript])
                #expect(leftovers == before, "left behind:\n\(leftovers)\nbefore the install:\n\(before)")
            }
        }
    }
}
