// The host facts the core's `Configuration.validate(on:)` asks for, from NSS and the file system.
// The same resolution as the process runner's (`WorkerCredentials`), so validation and start agree.
import BgWorkerCore
import Glibc

struct SystemWorkerHost: WorkerHost {
    func credentialsProblem(user: String?, group: String?) -> CredentialsProblem? {
        if let group {
            do throws(RunnerError) {
                _ = try WorkerCredentials.resolve(user: nil, group: group, worker: "")
            } catch {
                return .group("no such group")
            }
        }
        do throws(RunnerError) {
            _ = try WorkerCredentials.resolve(user: user, group: group, worker: "")
        } catch {
            return .user(error.context.hasPrefix("no such user") ? "no such user" : error.context)
        }
        return nil
    }

    /// By the permission bits (stat follows links), as the kernel checks them for a process of
    /// that uid, gid and groups; root needs one execute bit. ACLs and the search permission of
    /// the folders on the way are not checked: execve still reports those at start.
    func executableProblem(_ path: String, user: String?, group: String?) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return errnoText(errno) }
        guard info.st_mode & S_IFMT == S_IFREG else { return "not a regular file" }
        guard let credentials = try? WorkerCredentials.resolve(user: user, group: group, worker: "") else { return nil }
        let uid = credentials.uid ?? geteuid()
        let gid = credentials.gid ?? getegid()
        let groups = credentials.groups ?? (credentials.gid == nil ? ownGroups() : [gid])
        let mode = info.st_mode
        let executable: Bool
        if uid == 0 {
            executable = mode & (S_IXUSR | S_IXGRP | S_IXOTH) != 0
        } else if info.st_uid == uid {
            executable = mode & S_IXUSR != 0
        } else if info.st_gid == gid || groups.contains(info.st_gid) {
            executable = mode & S_IXGRP != 0
        } else {
            executable = mode & S_IXOTH != 0
        }
        guard !executable else { return nil }
        return "not executable by " + (user.map { "user \($0)" } ?? "uid \(uid)")
    }

    func directoryProblem(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return errnoText(errno) }
        return info.st_mode & S_IFMT == S_IFDIR ? nil : "not a directory"
    }

    /// The daemon's supplementary groups (getgroups).
    private func ownGroups() -> [gid_t] {
        let count = getgroups(0, nil)
        guard count > 0 else { return [] }
        var groups = [gid_t](repeating: 0, count: Int(count))
        let filled = getgroups(count, &groups)
        return filled > 0 ? Array(groups.prefix(Int(filled))) : []
    }
}
