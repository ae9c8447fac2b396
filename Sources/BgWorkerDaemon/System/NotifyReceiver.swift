// STUB for the lead's build: replaced by the `notify` branch's receiver at merge.
import BgWorkerCore
import Glibc

final class NotifyReceiver {
    let fd: Int32
    let path: String
    init(path: String) throws(SystemCallError) {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError(call: "socket", errno: errno) }
    }
    func receive() -> NotifyDatagram? { nil }
    func close() { _ = Glibc.close(fd) }
}

enum NotifyDatagram: Equatable {
    case message(pid: Int32, uid: UInt32, NotifyMessage)
    case refused(pid: Int32?, reason: String)
}
