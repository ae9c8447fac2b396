// Workers' stdout and stderr: read by one thread of their own, so that a worker that floods its
// output (or a slow journal, or a full stderr pipe) stalls only its own writes, never the event loop
// thread that spawns and reaps, nor the supervisor.
import CShims
import Glibc
import Synchronization

/// Where the lines workers print go.
public enum WorkerOutputDestination: Sendable, Equatable {
    /// The journal, one entry per line: `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER=<name>`,
    /// `BGWORKER_NAME=<name>`, `BGWORKER_PID=<pid>`.
    case journal
    /// A file descriptor (the daemon's stderr, normally), one `name: line` per line.
    case fileDescriptor(Int32)

    /// The journal where journald runs, else the daemon's stderr.
    public static var automatic: Self { Journal.isAvailable ? .journal : .fileDescriptor(2) }
}

/// One line a worker printed, as it is delivered.
struct WorkerLine {
    var worker: String
    var pid: Int32
    var priority: Int32
    var text: Substring

    /// Strips an sd-daemon `<N>` prefix (N 0...7), which then sets the priority, as journald's
    /// stdout streams do.
    init(worker: String, pid: Int32, defaultPriority: Int32, raw: [UInt8]) {
        self.worker = worker
        self.pid = pid
        var bytes = raw[...]
        if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
        var priority = defaultPriority
        if bytes.count >= 3, bytes[bytes.startIndex] == UInt8(ascii: "<"),
           bytes[bytes.startIndex + 2] == UInt8(ascii: ">"),
           (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(bytes[bytes.startIndex + 1]) {
            priority = Int32(bytes[bytes.startIndex + 1] - UInt8(ascii: "0"))
            bytes = bytes.dropFirst(3)
        }
        self.priority = priority
        // Bytes that are not UTF-8 decode as U+FFFD; so do noncharacters, which sd-bus (busctl)
        // refuses in a string: a reply holding one would fail to parse there.
        let text = String(decoding: bytes, as: UTF8.self)
        if text.unicodeScalars.contains(where: Self.isNoncharacter) {
            var scalars = String.UnicodeScalarView()
            scalars.append(contentsOf: text.unicodeScalars.lazy.map { Self.isNoncharacter($0) ? "\u{FFFD}" : $0 })
            self.text = Substring(String(scalars))
        } else {
            self.text = Substring(text)
        }
    }

    /// U+FDD0...U+FDEF and the last two code points of every plane.
    static func isNoncharacter(_ scalar: Unicode.Scalar) -> Bool {
        (0xFDD0...0xFDEF).contains(scalar.value) || scalar.value & 0xFFFE == 0xFFFE
    }

    func deliver(to destination: WorkerOutputDestination) {
        switch destination {
        case .journal:
            Journal.send([
                "MESSAGE=\(text)", "PRIORITY=\(priority)", "SYSLOG_IDENTIFIER=\(worker)",
                "BGWORKER_NAME=\(worker)", "BGWORKER_PID=\(pid)",
            ])
        case .fileDescriptor(let fd):
            writeFully(fd, Array("\(worker): \(text)\n".utf8))
        }
    }
}

/// Writes all of `bytes` to a (blocking) fd; gives up on an error other than EINTR.
func writeFully(_ fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = retryOnInterrupt { write(fd, raw.baseAddress! + offset, raw.count - offset) }
            if n <= 0 { return }
            offset += n
        }
    }
}

/// The thread that reads every worker's pipes: epoll over the read ends (non-blocking), line
/// splitting, lines longer than `maxLineLength` cut into pieces.
final class WorkerOutputPump: @unchecked Sendable {
    // Safety of @unchecked Sendable: `requests` is a Mutex and `wake`/`epoll` are only read
    // (their fds are fixed); `streams`, `scratch` and `finishing` are touched only on the pump
    // thread, which starts in `init` after they are set up.

    static let maxLineLength = 4096
    private static let readChunk = 64 * 1024

    private enum Request {
        case watch(fd: Int32, worker: String, pid: Int32, priority: Int32)
        case finish(@Sendable () -> Void)
    }

    private struct Stream {
        var fd: Int32
        var worker: String
        var pid: Int32
        var priority: Int32
        var pending: [UInt8] = []
        /// Whether the last line ended at a NUL.
        var afterNul = false
    }

    private let destination: WorkerOutputDestination
    private let logs: WorkerLogBuffers?
    private let requests = Mutex<[Request]>([])
    private let wake: EventFD
    private let epoll: Epoll
    private var streams: [Int32: Stream] = [:]
    private var scratch = [UInt8](repeating: 0, count: WorkerOutputPump.readChunk)
    private var finished: (@Sendable () -> Void)?

    private static let wakeToken = UInt64.max

    init(destination: WorkerOutputDestination, logs: WorkerLogBuffers? = nil) throws(SystemCallError) {
        self.destination = destination
        self.logs = logs
        wake = try EventFD()
        epoll = try Epoll()
        try epoll.add(wake.fd, token: Self.wakeToken)
        try startDedicatedThread(name: "bgw-output") { [self] in run() }
    }

    /// Hands over the read end of a worker's pipe (O_NONBLOCK, O_CLOEXEC); the pump closes it
    /// at end of file.
    func watch(fd: Int32, worker: String, pid: Int32, priority: Int32) {
        requests.withLock { $0.append(.watch(fd: fd, worker: worker, pid: pid, priority: priority)) }
        wake.signal()
    }

    /// Reads what is left in every pipe, closes them, ends the thread, then calls `done`.
    func finish(then done: @escaping @Sendable () -> Void) {
        requests.withLock { $0.append(.finish(done)) }
        wake.signal()
    }

    private func run() {
        var ready = [epoll_event](repeating: epoll_event(), count: 64)
        while finished == nil {
            for event in epoll.wait(into: &ready) {
                let token = event.data.u64
                if token == Self.wakeToken {
                    wake.drain()
                    handleRequests()
                } else {
                    readAvailable(Int32(truncatingIfNeeded: token), untilDrained: false)
                }
            }
        }
        // Every worker is gone, so what they wrote is in the pipes; a straggler that left its
        // process group and still holds a pipe loses it here.
        for fd in Array(streams.keys) { readAvailable(fd, untilDrained: true) }
        for fd in Array(streams.keys) { closeStream(fd) }
        finished?()
    }

    private func handleRequests() {
        for request in requests.withLock({ r -> [Request] in defer { r = [] }; return r }) {
            switch request {
            case let .watch(fd, worker, pid, priority):
                streams[fd] = Stream(fd: fd, worker: worker, pid: pid, priority: priority)
                do { try epoll.add(fd, token: UInt64(fd)) } catch { closeStream(fd) }
            case .finish(let done):
                finished = done
            }
        }
    }

    /// One read per readiness event keeps the pump fair between workers (epoll is level-
    /// triggered); when finishing, reads until the pipe is empty.
    private func readAvailable(_ fd: Int32, untilDrained: Bool) {
        repeat {
            let n = scratch.withUnsafeMutableBytes { raw in
                retryOnInterrupt { read(fd, raw.baseAddress, raw.count) }
            }
            if n > 0 {
                consume(fd, count: n)
            } else if n == 0 || errno != EAGAIN {
                closeStream(fd)
                return
            } else {
                return
            }
        } while untilDrained
    }

    private func consume(_ fd: Int32, count: Int) {
        guard var stream = streams[fd] else { return }
        streams[fd] = nil  // edit in place without copying `pending`
        stream.pending.append(contentsOf: scratch[0..<count])
        var start = 0
        let bytes = stream.pending
        var index = 0
        while index < bytes.count {
            // A NUL ends a line too, as in journald's stdout streams: no line holds one (a D-Bus
            // string cannot, and the journal's MESSAGE would become a blob). Unlike journald,
            // NULs (and a newline right after one) make no empty lines: /dev/zero is no line per byte.
            let byte = bytes[index]
            if byte == UInt8(ascii: "\n") || byte == 0 {
                if index > start || !(byte == 0 || stream.afterNul) { emit(stream, Array(bytes[start..<index])) }
                stream.afterNul = byte == 0
                start = index + 1
            } else if index - start + 1 >= Self.maxLineLength {
                stream.afterNul = false
                let end = Self.utf8Boundary(bytes, from: start, before: index + 1)
                emit(stream, Array(bytes[start..<end]))
                start = end
                index = end - 1
            }
            index += 1
        }
        stream.pending.removeFirst(start)
        streams[fd] = stream
    }

    /// Where to cut a line that is too long: `end`, or before a UTF-8 sequence that would
    /// straddle it (the next piece starts with it), so that neither piece gets a U+FFFD for it.
    static func utf8Boundary(_ bytes: [UInt8], from start: Int, before end: Int) -> Int {
        var lead = end - 1
        while lead > start, end - lead < 4, bytes[lead] & 0xC0 == 0x80 { lead -= 1 }
        let length = switch bytes[lead] {
        case 0xC0...0xDF: 2
        case 0xE0...0xEF: 3
        case 0xF0...0xF7: 4
        default: 1
        }
        return lead > start && lead + length > end ? lead : end
    }

    private func emit(_ stream: Stream, _ line: [UInt8]) {
        let parsed = WorkerLine(worker: stream.worker, pid: stream.pid, defaultPriority: stream.priority, raw: line)
        parsed.deliver(to: destination)
        logs?.append(worker: parsed.worker, text: parsed.text)
    }

    private func closeStream(_ fd: Int32) {
        guard let stream = streams.removeValue(forKey: fd) else { return }
        if !stream.pending.isEmpty { emit(stream, stream.pending) }
        epoll.remove(fd)
        close(fd)
    }
}
