// The daemon's end of the notify protocol (sd_notify(3)): the socket whose path workers get as
// NOTIFY_SOCKET. It receives datagrams, keeps their sender's credentials, closes every file
// descriptor that comes along, and parses the bytes (NotifyMessage). Attribution of a pid to a
// worker, and what a message does, are the supervisor's. docs/notify.md has the rules.
import BgWorkerCore
import CShims
import Glibc

/// One received datagram: a message with its sender's credentials (SCM_CREDENTIALS, set by the
/// kernel), or why it was refused (the pid when the credentials said it).
enum NotifyDatagram: Equatable {
    case message(pid: Int32, uid: UInt32, NotifyMessage)
    case refused(pid: Int32?, reason: String)
}

/// One AF_UNIX datagram socket bound at a path (a stale socket there is unlinked first; mode 0666
/// so that workers running as other users can send), SOCK_NONBLOCK|SOCK_CLOEXEC, SO_PASSCRED on,
/// and a receive buffer big enough for floods (SO_RCVBUFFORCE 8 MB when root, else SO_RCVBUF).
///
/// Not Sendable: `receive()` reuses its buffers. The daemon owns it on one thread (its event loop)
/// and registers `fd` there for readability.
final class NotifyReceiver {
    let fd: Int32
    /// The value for NOTIFY_SOCKET.
    let path: String
    private var closed = false
    /// The socket file's identity: close() unlinks the path only while it is still ours (a newer
    /// receiver may have replaced it, e.g. across a daemon restart).
    private let inode: (device: UInt64, number: UInt64)
    // Reused by every receive: one byte more than a datagram may have, so that MSG_TRUNC's length
    // tells an oversized one apart; the control buffer takes credentials and up to 253 fds.
    private var payload = [UInt8](repeating: 0, count: NotifyMessage.maximumSize + 1)
    private var control = [UInt8](repeating: 0, count: NotifyReceiver.controlSize)

    /// The most file descriptors one datagram can carry on Linux (SCM_MAX_FD).
    static let maximumFDs = 253
    static let headerSize = cmsgAlign(MemoryLayout<cmsghdr>.size)
    static let controlSize = cmsgAlign(PeerCredentials.size) + headerSize
        + cmsgAlign(MemoryLayout<Int32>.size * maximumFDs) + headerSize

    /// Binds the socket at `path`. A socket file already there is a stale one (a daemon that
    /// died) and is replaced; any other file there is left alone and bind fails with EADDRINUSE.
    init(path: String) throws(SystemCallError) {
        // A NUL would cut the C string short; '@' would make an abstract name, which has no file
        // to chmod or unlink (and is what a worker reads "@..." in NOTIFY_SOCKET as).
        guard !path.utf8.contains(0), !path.hasPrefix("@") else {
            throw SystemCallError(call: "bind \(path) (a notify socket is a file: no NUL, no leading '@')", errno: EINVAL)
        }
        var address = sockaddr_un()
        var length = socklen_t(0)
        guard _bgw_sockaddr_un(path, &address, &length) == 0 else {
            let error = errno
            let limit = MemoryLayout.size(ofValue: address.sun_path) - 1
            throw SystemCallError(
                call: "bind \(path)" + (error == ENAMETOOLONG ? " (\(path.utf8.count) bytes, at most \(limit))" : ""), errno: error)
        }

        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError(call: "socket(AF_UNIX, SOCK_DGRAM)", errno: errno) }
        var status = stat()
        if lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK { unlink(path) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else {
            let error = errno
            Glibc.close(fd)
            throw SystemCallError(call: "bind \(path)", errno: error)
        }
        func fail(_ call: String) -> SystemCallError {
            let error = SystemCallError(call: call, errno: errno)
            Glibc.close(fd)
            unlink(path)
            return error
        }
        // The socket file is created with the umask; workers of every user must be able to send.
        guard chmod(path, 0o666) == 0 else { throw fail("chmod \(path)") }
        var on: Int32 = 1
        guard setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw fail("setsockopt(SO_PASSCRED)")
        }
        // A unix datagram waits in our queue charged to its sender (and max_dgram_qlen bounds the
        // count), so this mostly matters for a flood from many senders; best effort either way.
        var size: Int32 = 8 * 1024 * 1024
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        guard lstat(path, &status) == 0 else { throw fail("lstat \(path)") }
        inode = (UInt64(status.st_dev), UInt64(status.st_ino))
        self.fd = fd
        self.path = path
    }

    deinit { close() }

    /// Closes the socket and unlinks its path (unless another socket has replaced it). Idempotent.
    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
        var status = stat()
        if lstat(path, &status) == 0, UInt64(status.st_dev) == inode.device, UInt64(status.st_ino) == inode.number {
            unlink(path)
        }
    }

    /// Whether `path` is still this socket's file (not removed or replaced since the bind).
    var isStillAtPath: Bool {
        var status = stat()
        return !closed && lstat(path, &status) == 0
            && UInt64(status.st_dev) == inode.device && UInt64(status.st_ino) == inode.number
    }

    /// The next datagram, or nil when none is waiting (EAGAIN, or the socket is closed). Never
    /// blocks and never fails for a peer's bytes: those come back as `.refused`.
    func receive() -> NotifyDatagram? {
        guard !closed else { return nil }
        let capacity = payload.count
        let controlCapacity = control.count
        let (received, flags, controlLength): (Int, Int32, Int) = payload.withUnsafeMutableBytes { payloadBytes in
            control.withUnsafeMutableBytes { controlBytes in
                var vector = iovec(iov_base: payloadBytes.baseAddress, iov_len: capacity)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var header = msghdr()
                    header.msg_iov = vectorPointer
                    header.msg_iovlen = 1
                    header.msg_control = controlBytes.baseAddress
                    header.msg_controllen = controlCapacity
                    // MSG_TRUNC: the datagram's real length, to refuse an oversized one by its size.
                    let n = retryOnInterrupt {
                        recvmsg(fd, &header, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC) | Int32(MSG_CMSG_CLOEXEC))
                    }
                    return (n, header.msg_flags, header.msg_controllen)
                }
            }
        }
        // EAGAIN: drained. Any other error of recvmsg on our own socket (ENOMEM) says nothing
        // about a peer; nil lets the loop wait for the next readiness.
        guard received >= 0 else { return nil }

        let (credentials, descriptors) = Self.controlMessages(control, length: controlLength)
        // Every fd is closed at once: a BARRIER=1 sender waits for exactly that, and we keep none.
        for descriptor in descriptors { Glibc.close(descriptor) }
        let pid = credentials.flatMap { $0.pid > 0 ? $0.pid : nil }

        if flags & Int32(MSG_CTRUNC) != 0 {
            return .refused(pid: pid, reason: "control data truncated (over \(Self.maximumFDs) file descriptors?)")
        }
        if flags & Int32(MSG_TRUNC) != 0 || received > NotifyMessage.maximumSize {
            return .refused(pid: pid, reason: "datagram of \(received) bytes, over \(NotifyMessage.maximumSize)")
        }
        guard let credentials, let pid else { return .refused(pid: nil, reason: "no credentials") }
        let message: NotifyMessage
        do {
            message = try NotifyMessage(parsing: payload[0..<received])
        } catch {
            return .refused(pid: pid, reason: error.description)
        }
        // A barrier (sd_notify_barrier, systemd-notify) passes one pipe end and waits for it to
        // close: a normal message. Any other fd is refused, as we keep no fd store.
        if !descriptors.isEmpty && !(message.barrier && descriptors.count == 1) {
            let count = descriptors.count
            return .refused(pid: pid, reason: "carries \(count) file descriptor\(count == 1 ? "" : "s")")
        }
        return .message(pid: pid, uid: credentials.uid, message)
    }

    /// Linux's `struct ucred` {pid_t, uid_t, gid_t} and SCM_CREDENTIALS (2): Glibc declares them only
    /// under _GNU_SOURCE, which Swift's Glibc module does not see. The kernel ABI fixes both.
    struct PeerCredentials {
        var pid: Int32
        var uid: UInt32
        static let size = 12
        static let scmCredentials: Int32 = 2
    }

    /// SCM_CREDENTIALS and every SCM_RIGHTS fd in the first `length` bytes of a control buffer
    /// (CMSG_FIRSTHDR / CMSG_NXTHDR: those are C macros, not visible to Swift).
    static func controlMessages(_ buffer: [UInt8], length: Int) -> (PeerCredentials?, [Int32]) {
        var credentials: PeerCredentials?
        var descriptors: [Int32] = []
        buffer.withUnsafeBytes { raw in
            let end = min(length, raw.count)
            var offset = 0
            // Each header is read by loadUnaligned within [offset, offset + headerSize) <= end, and
            // its data within [offset + headerSize, offset + cmsg_len) <= end: never past the buffer.
            while offset + headerSize <= end {
                let header = raw.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
                let total = Int(header.cmsg_len)
                guard total >= headerSize, offset + total <= end else { break }
                let dataOffset = offset + headerSize
                let dataLength = total - headerSize
                if header.cmsg_level == SOL_SOCKET {
                    if header.cmsg_type == Int32(SCM_RIGHTS) {
                        for index in 0..<(dataLength / MemoryLayout<Int32>.size) {
                            descriptors.append(raw.loadUnaligned(
                                fromByteOffset: dataOffset + index * MemoryLayout<Int32>.size, as: Int32.self))
                        }
                    } else if header.cmsg_type == PeerCredentials.scmCredentials, dataLength >= PeerCredentials.size {
                        credentials = PeerCredentials(
                            pid: raw.loadUnaligned(fromByteOffset: dataOffset, as: Int32.self),
                            uid: raw.loadUnaligned(fromByteOffset: dataOffset + 4, as: UInt32.self))
                    }
                }
                offset += cmsgAlign(total)
            }
        }
        return (credentials, descriptors)
    }
}

/// CMSG_ALIGN: control messages are laid out on size_t boundaries.
private func cmsgAlign(_ length: Int) -> Int {
    let alignment = MemoryLayout<Int>.size
    return (length + alignment - 1) & ~(alignment - 1)
}
