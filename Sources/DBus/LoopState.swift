import CDBus
import Glibc
import SystemSupport

/// Everything the connection thread owns: the libdbus connection, its watches and timeouts in an
/// epoll set, the calls awaiting replies, the signal subscriptions. Touched on that thread only.
///
/// Calls keep their own serial -> completion map and their own deadlines (one timerfd for all)
/// rather than `DBusPendingCall`: the reply is matched in the same pass that reads it, a
/// disconnect fails every call at once with our typed error, cancellation is a map removal, and
/// there is no per-call libdbus timeout, pending-call object or notify closure to allocate.
final class LoopState {
    /// The core owns this state (through `LoopStateBox`), so the reference back is unowned; it
    /// is only used on the connection thread, whose entry closure holds the core strongly while
    /// the thread runs, and in `setUp` (called by the core's init). Checked `unowned`: a use
    /// after the core is gone would trap at once rather than read freed memory.
    private(set) unowned var core: ConnectionCore!
    /// The public handle, for `MethodCall.connection`; weak so that dropping the handle closes.
    weak var handle: DBusConnection?

    var connection: OpaquePointer?
    var busClient = true
    /// The connection has been shut down (closed or lost); work still queued sees this.
    var finished = false
    var shutdownReason: DBusConnectionError?
    /// True while a job (handler code) runs, so `submit` from it may run at once.
    var inlineAllowed = false

    private var epollFD: Int32 = -1
    private var deadlineTimerFD: Int32 = -1
    private var armedDeadline: UInt64 = 0

    private var watchesByFD: [Int32: [OpaquePointer]] = [:]
    private var epollEventsByFD: [Int32: UInt32] = [:]
    private var timeoutsByFD: [Int32: OpaquePointer] = [:]

    var pending: [UInt32: PendingCall] = [:]
    private var deadlines = DeadlineHeap()

    var subscriptions: [UInt64: SignalRoute] = [:]
    var machineID: String?
    /// The last GetManagedObjects reply per object manager, with `ExportedObject.changes` as
    /// read before it was built (owned references; released at shutdown).
    var managedReplies: [ObjectPath: (changes: UInt64, message: OpaquePointer)] = [:]

    // epoll tags: the kind in the high 32 bits, a descriptor in the low ones.
    private enum Tag {
        static let wake: UInt64 = 1 << 32
        static let deadline: UInt64 = 2 << 32
        static let watch: UInt64 = 3 << 32
        static let timeout: UInt64 = 4 << 32
    }

    deinit {
        // Only when the thread never ran (it closes them itself when it ends).
        if epollFD >= 0 { Glibc.close(epollFD) }
        if deadlineTimerFD >= 0 { Glibc.close(deadlineTimerFD) }
        for (_, kept) in managedReplies { dbus_message_unref(kept.message) }
    }

    func setUp(core: ConnectionCore) throws(DBusConnectionError) {
        self.core = core
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        deadlineTimerFD = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard epollFD >= 0, deadlineTimerFD >= 0 else {
            if epollFD >= 0 { Glibc.close(epollFD) }
            if deadlineTimerFD >= 0 { Glibc.close(deadlineTimerFD) }
            throw DBusConnectionError(.connectFailed, "epoll/timerfd: \(String(cString: strerror(errno)))")
        }
        epollAdd(core.eventFD, Tag.wake | UInt64(UInt32(bitPattern: core.eventFD)), UInt32(EPOLLIN.rawValue))
        epollAdd(deadlineTimerFD, Tag.deadline, UInt32(EPOLLIN.rawValue))
    }

    private func epollAdd(_ fd: Int32, _ tag: UInt64, _ events: UInt32) {
        var ev = epoll_event()
        ev.events = events
        ev.data.u64 = tag
        _ = epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &ev)
    }

    // MARK: The loop

    func run(address: String, busClient: Bool, timeout: Duration, ready: CheckedContinuation<Void, any Error>) {
        self.busClient = busClient
        var error = CDBus.DBusError()
        dbus_error_init(&error)
        guard let c = dbus_connection_open_private(address, &error) else {
            let message = error.message.map { String(cString: $0) } ?? "cannot connect"
            dbus_error_free(&error)
            ready.resume(throwing: DBusConnectionError(.connectFailed, "\(address): \(message)"))
            finished = true
            finish()
            return
        }
        connection = c
        dbus_connection_set_exit_on_disconnect(c, 0)
        let me = Unmanaged.passUnretained(self).toOpaque()
        dbus_connection_set_watch_functions(c, loopAddWatch, loopRemoveWatch, loopToggleWatch, me, nil)
        dbus_connection_set_timeout_functions(c, loopAddTimeout, loopRemoveTimeout, loopToggleTimeout, me, nil)

        if busClient {
            sayHello(timeout: timeout, ready: ready)
        } else {
            ready.resume()
        }

        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while !finished {
            let n = epoll_wait(epollFD, &events, Int32(events.count), -1)
            if n < 0 {
                if errno == EINTR { continue }
                shutdown(DBusConnectionError(.disconnected, "epoll_wait: \(String(cString: strerror(errno)))"))
                break
            }
            for i in 0..<Int(n) {
                handle(events[i])
                if finished { break }
            }
            repeat {
                dispatchIncoming()
                drainQueue()
            } while !finished && hasIncoming
        }
        finish()
    }

    private var hasIncoming: Bool {
        guard let c = connection else { return false }
        return dbus_connection_get_dispatch_status(c) == DBUS_DISPATCH_DATA_REMAINS
    }

    private func handle(_ event: epoll_event) {
        let tag = event.data.u64
        let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: tag))
        switch tag & 0xFFFF_FFFF_0000_0000 {
        case Tag.wake:
            var count: UInt64 = 0
            _ = read(core.eventFD, &count, 8)
        case Tag.deadline:
            var count: UInt64 = 0
            _ = read(deadlineTimerFD, &count, 8)
            armedDeadline = 0
            expireDeadlines()
        case Tag.watch:
            handleWatch(fd: fd, revents: event.events)
        case Tag.timeout:
            var count: UInt64 = 0
            _ = read(fd, &count, 8)
            if let t = timeoutsByFD[fd], dbus_timeout_get_enabled(t) != 0 {
                dbus_timeout_handle(t)
            }
        default:
            break
        }
    }

    /// Runs queued work and jobs until the queue is empty.
    func drainQueue() {
        while true {
            let batch = core.queue.withLock { q -> [LoopItem] in
                if q.items.isEmpty {
                    q.wakePending = false
                    return []
                }
                defer { q.items.removeAll(keepingCapacity: true) }
                return q.items
            }
            if batch.isEmpty { return }
            for item in batch {
                switch item {
                case .work(let work):
                    work(self)
                case .job(let job):
                    inlineAllowed = true
                    job.runSynchronously(on: core.asUnownedTaskExecutor())
                    inlineAllowed = false
                }
            }
        }
    }

    /// After the loop: refuse further work, run what is queued (it sees `finished`), hand
    /// queued jobs to the global executor, release descriptors.
    private func finish() {
        while true {
            let batch = core.queue.withLock { q -> [LoopItem] in
                if q.items.isEmpty { q.closed = true }
                defer { q.items.removeAll() }
                return q.items
            }
            if batch.isEmpty { break }
            for item in batch {
                switch item {
                case .work(let work): work(self)
                case .job(let job): globalConcurrentExecutor.enqueue(ExecutorJob(job))
                }
            }
        }
        if epollFD >= 0 { Glibc.close(epollFD) }
        if deadlineTimerFD >= 0 { Glibc.close(deadlineTimerFD) }
        epollFD = -1
        deadlineTimerFD = -1
        // The thread ends; its id may be given to another thread.
        core.forgetLoopThread()
    }

    /// Ends the connection: every call fails, every subscription ends, owners hear of it.
    func shutdown(_ reason: DBusConnectionError) {
        guard !finished else { return }
        finished = true
        shutdownReason = reason
        let calls = pending
        pending = [:]
        for (_, call) in calls { call.complete(self, .failure(reason)) }
        for (_, kept) in managedReplies { dbus_message_unref(kept.message) }
        managedReplies = [:]
        let routes = subscriptions
        subscriptions = [:]
        for (_, route) in routes { route.finish(throwing: reason) }
        core.exports.withLock { registry in
            for object in registry.values { object.detach(core) }
            registry = [:]
        }
        let subscribers = core.events.withLock { hub -> [AsyncStream<ConnectionEvent>.Continuation] in
            hub.terminal = .disconnected(reason)
            defer { hub.subscribers = [:] }
            return Array(hub.subscribers.values)
        }
        for s in subscribers {
            s.yield(.disconnected(reason))
            s.finish()
        }
        if let c = connection {
            connection = nil
            dbus_connection_close(c)
            dbus_connection_unref(c)
        }
        for (fd, _) in timeoutsByFD { Glibc.close(fd) }
        timeoutsByFD = [:]
        watchesByFD = [:]
    }

    // MARK: Watches

    fileprivate func addWatch(_ watch: OpaquePointer) {
        let fd = dbus_watch_get_unix_fd(watch)
        watchesByFD[fd, default: []].append(watch)
        updateEpoll(fd)
    }

    fileprivate func removeWatch(_ watch: OpaquePointer) {
        let fd = dbus_watch_get_unix_fd(watch)
        watchesByFD[fd]?.removeAll { $0 == watch }
        if watchesByFD[fd]?.isEmpty == true { watchesByFD[fd] = nil }
        updateEpoll(fd)
    }

    fileprivate func toggleWatch(_ watch: OpaquePointer) {
        updateEpoll(dbus_watch_get_unix_fd(watch))
    }

    /// Registers the union of the enabled watches of `fd`; a descriptor with no enabled watch
    /// leaves the epoll set, so a hung-up socket cannot spin the loop.
    private func updateEpoll(_ fd: Int32) {
        var wanted: UInt32 = 0
        for w in watchesByFD[fd] ?? [] where dbus_watch_get_enabled(w) != 0 {
            let flags = dbus_watch_get_flags(w)
            if flags & DBUS_WATCH_READABLE.rawValue != 0 { wanted |= EPOLLIN.rawValue }
            if flags & DBUS_WATCH_WRITABLE.rawValue != 0 { wanted |= EPOLLOUT.rawValue }
        }
        let current = epollEventsByFD[fd]
        var ev = epoll_event()
        ev.events = wanted
        ev.data.u64 = Tag.watch | UInt64(UInt32(bitPattern: fd))
        if wanted == 0 {
            if current != nil {
                _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, &ev)
                epollEventsByFD[fd] = nil
            }
        } else if current == nil {
            _ = epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &ev)
            epollEventsByFD[fd] = wanted
        } else if current != wanted {
            _ = epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &ev)
            epollEventsByFD[fd] = wanted
        }
    }

    private func handleWatch(fd: Int32, revents: UInt32) {
        for w in watchesByFD[fd] ?? [] {
            // A handled watch may remove or disable others of the same descriptor.
            guard watchesByFD[fd]?.contains(w) == true, dbus_watch_get_enabled(w) != 0 else { continue }
            let wanted = dbus_watch_get_flags(w)
            var flags: UInt32 = 0
            if revents & EPOLLIN.rawValue != 0 && wanted & DBUS_WATCH_READABLE.rawValue != 0 { flags |= DBUS_WATCH_READABLE.rawValue }
            if revents & EPOLLOUT.rawValue != 0 && wanted & DBUS_WATCH_WRITABLE.rawValue != 0 { flags |= DBUS_WATCH_WRITABLE.rawValue }
            if revents & EPOLLERR.rawValue != 0 { flags |= DBUS_WATCH_ERROR.rawValue }
            if revents & EPOLLHUP.rawValue != 0 { flags |= DBUS_WATCH_HANGUP.rawValue }
            if flags != 0 { dbus_watch_handle(w, flags) }
        }
    }

    // MARK: libdbus timeouts, one timerfd each

    fileprivate func addTimeout(_ timeout: OpaquePointer) -> Bool {
        let fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard fd >= 0 else { return false }
        timeoutsByFD[fd] = timeout
        dbus_timeout_set_data(timeout, UnsafeMutableRawPointer(bitPattern: Int(fd) + 1), nil)
        epollAdd(fd, Tag.timeout | UInt64(UInt32(bitPattern: fd)), UInt32(EPOLLIN.rawValue))
        armTimeout(timeout, fd)
        return true
    }

    private func timerFD(of timeout: OpaquePointer) -> Int32? {
        guard let raw = dbus_timeout_get_data(timeout) else { return nil }
        return Int32(Int(bitPattern: raw) - 1)
    }

    fileprivate func removeTimeout(_ timeout: OpaquePointer) {
        guard let fd = timerFD(of: timeout), timeoutsByFD[fd] == timeout else { return }
        timeoutsByFD[fd] = nil
        var ev = epoll_event()
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, &ev)
        Glibc.close(fd)
    }

    /// (Re-)arms the timer of a libdbus timeout: libdbus timeouts repeat every interval while
    /// enabled; a toggle re-arms or disarms.
    fileprivate func toggleTimeout(_ timeout: OpaquePointer) {
        guard let fd = timerFD(of: timeout), timeoutsByFD[fd] == timeout else { return }
        armTimeout(timeout, fd)
    }

    private func armTimeout(_ timeout: OpaquePointer, _ fd: Int32) {
        var spec = itimerspec()
        if dbus_timeout_get_enabled(timeout) != 0 {
            let ms = max(Int(dbus_timeout_get_interval(timeout)), 1)
            spec.it_value = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
            spec.it_interval = spec.it_value
        }
        _ = timerfd_settime(fd, 0, &spec, nil)
    }

    // MARK: Deadlines of our calls

    func addDeadline(_ deadline: UInt64, serial: UInt32, id: UInt64) {
        deadlines.push(DeadlineHeap.Entry(deadline: deadline, serial: serial, id: id))
        if armedDeadline == 0 || deadline < armedDeadline { armDeadlineTimer(deadline) }
    }

    private func armDeadlineTimer(_ deadline: UInt64) {
        armedDeadline = deadline
        var spec = itimerspec()
        let d = max(deadline, 1)
        spec.it_value = timespec(tv_sec: Int(d / 1_000_000_000), tv_nsec: Int(d % 1_000_000_000))
        _ = timerfd_settime(deadlineTimerFD, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }

    private func clearDeadlines() {
        deadlines = DeadlineHeap()
        guard armedDeadline != 0 else { return }
        armedDeadline = 0
        var off = itimerspec()
        _ = timerfd_settime(deadlineTimerFD, Int32(TFD_TIMER_ABSTIME), &off, nil)
    }

    private func expireDeadlines() {
        let now = monotonicNanoseconds()
        while let top = deadlines.top {
            if let call = pending[top.serial], call.id != top.id {
                deadlines.pop()  // stale entry of a reused serial
                continue
            }
            guard pending[top.serial] != nil else {
                deadlines.pop()  // answered or cancelled
                continue
            }
            if top.deadline > now {
                armDeadlineTimer(top.deadline)
                return
            }
            deadlines.pop()
            if let call = pending.removeValue(forKey: top.serial) {
                call.complete(self, .failure(DBusConnectionError(.timeout, "no reply to \(call.what) within its deadline")))
            }
        }
    }

    // MARK: Incoming messages

    private func dispatchIncoming() {
        while !finished, let c = connection, let message = dbus_connection_pop_message(c) {
            dispatch(message)
            dbus_message_unref(message)
        }
    }

    private func dispatch(_ message: OpaquePointer) {
        switch dbus_message_get_type(message) {
        case DBUS_MESSAGE_TYPE_METHOD_RETURN, DBUS_MESSAGE_TYPE_ERROR:
            let serial = dbus_message_get_reply_serial(message)
            guard let call = pending.removeValue(forKey: serial) else { return }
            // The last answer: no deadline is left to wake for (an idle daemon does not wake).
            if pending.isEmpty { clearDeadlines() }
            call.complete(self, replyResult(message))
        case DBUS_MESSAGE_TYPE_SIGNAL:
            if dbus_message_is_signal(message, DBUS_INTERFACE_LOCAL, "Disconnected") != 0,
               dbus_message_has_path(message, DBUS_PATH_LOCAL) != 0 {
                shutdown(DBusConnectionError(.disconnected, "the bus closed the connection"))
                return
            }
            routeSignal(message)
        case DBUS_MESSAGE_TYPE_METHOD_CALL:
            dispatchMethodCall(message)
        default:
            break
        }
    }

    private func replyResult(_ message: OpaquePointer) -> Result<[DBusValue], any Error> {
        let values: [DBusValue]
        do { values = try Marshal.read(message) } catch { return .failure(error) }
        if dbus_message_get_type(message) == DBUS_MESSAGE_TYPE_ERROR {
            let name = dbus_message_get_error_name(message).map { String(cString: $0) } ?? DBusError.Name.failed
            return .failure(DBusError(name, values.first?.stringValue ?? ""))
        }
        return .success(values)
    }

    // MARK: Sending

    /// Sends and releases `message`; false when the connection cannot take it.
    func sendAndRelease(_ message: OpaquePointer, serial: UnsafeMutablePointer<UInt32>? = nil) -> Bool {
        defer { dbus_message_unref(message) }
        guard let c = connection else { return false }
        return dbus_connection_send(c, message, serial) != 0
    }

    var notConnectedError: DBusConnectionError {
        shutdownReason ?? DBusConnectionError(.disconnected, "not connected")
    }

    /// Builds a message with `values` as body; the caller owns the result.
    func fill(_ message: OpaquePointer, with values: [DBusValue]) throws(DBusConnectionError) {
        if Marshal.containsDescriptors(values) {
            guard let c = connection, dbus_connection_can_send_type(c, Int32(TypeCode.unixFD)) != 0 else {
                throw DBusConnectionError(.notSupported, "this connection cannot pass unix file descriptors")
            }
        }
        try Marshal.append(values, to: message)
    }

    /// Sends a method call; `completion` runs on this thread with the reply.
    func startCall(_ call: OutgoingCall, id: UInt64, completion: PendingCall.Completion) {
        guard connection != nil else {
            completion.run(self, .failure(notConnectedError))
            return
        }
        guard let message = call.destination.withOptionalCString({ dest in
            dbus_message_new_method_call(dest, call.path.rawValue, call.interface, call.member)
        }) else {
            completion.run(self, .failure(DBusConnectionError(.noMemory, "cannot create a message")))
            return
        }
        if !call.autoStart { dbus_message_set_auto_start(message, 0) }
        do {
            try fill(message, with: call.arguments)
        } catch {
            dbus_message_unref(message)
            completion.run(self, .failure(error))
            return
        }
        var serial: UInt32 = 0
        guard sendAndRelease(message, serial: &serial) else {
            completion.run(self, .failure(notConnectedError))
            return
        }
        let deadline = monotonicNanoseconds() &+ call.timeoutNanoseconds
        pending[serial] = PendingCall(id: id, what: "\(call.interface ?? "").\(call.member)", completion: completion)
        addDeadline(deadline, serial: serial, id: id)
    }

    func cancelCall(id: UInt64) {
        guard let entry = pending.first(where: { $0.value.id == id }) else { return }
        pending[entry.key] = nil
        entry.value.complete(self, .failure(CancellationError()))
    }

    /// Sends a call whose reply nobody waits for (RemoveMatch when a subscription ends).
    func sendNoReply(_ call: OutgoingCall) {
        guard connection != nil, let message = call.destination.withOptionalCString({ dest in
            dbus_message_new_method_call(dest, call.path.rawValue, call.interface, call.member)
        }) else { return }
        dbus_message_set_no_reply(message, 1)
        do { try fill(message, with: call.arguments) } catch {
            dbus_message_unref(message)
            return
        }
        _ = sendAndRelease(message)
    }

    func sendSignal(_ signal: OutgoingSignal) throws(DBusConnectionError) {
        guard connection != nil else { throw notConnectedError }
        if let message = signal.wireMessage() {
            guard sendAndRelease(message) else { throw notConnectedError }
            return
        }
        guard let message = dbus_message_new_signal(signal.path.rawValue, signal.interface, signal.member) else {
            throw DBusConnectionError(.noMemory, "cannot create a signal")
        }
        if let destination = signal.destination { dbus_message_set_destination(message, destination) }
        do { try fill(message, with: signal.arguments) } catch {
            dbus_message_unref(message)
            throw error
        }
        guard sendAndRelease(message) else { throw notConnectedError }
    }

    // MARK: Hello

    private func sayHello(timeout: Duration, ready: CheckedContinuation<Void, any Error>) {
        let hello = OutgoingCall(
            destination: BusDaemon.name, path: BusDaemon.path, interface: BusDaemon.interface,
            member: "Hello", arguments: [], timeoutNanoseconds: timeoutNanoseconds(timeout))
        startCall(hello, id: 0, completion: .callback { state, result in
            switch result {
            case .success(let values):
                guard let name = values.first?.stringValue, let c = state.connection else {
                    ready.resume(throwing: DBusConnectionError(.connectFailed, "Hello returned no unique name"))
                    state.shutdown(DBusConnectionError(.connectFailed, "Hello failed"))
                    return
                }
                // libdbus wants to know its unique name (dbus_bus_get_unique_name users).
                dbus_bus_set_unique_name(c, name)
                state.core.uniqueName.withLock { $0 = name }
                ready.resume()
            case .failure(let error):
                ready.resume(throwing: DBusConnectionError(.connectFailed, "Hello failed: \(error)"))
                state.shutdown(DBusConnectionError(.connectFailed, "Hello failed: \(error)"))
            }
        })
    }
}

/// A call on its way out; names already validated.
struct OutgoingCall: Sendable {
    var destination: String?
    var path: ObjectPath
    var interface: String?
    var member: String
    var arguments: [DBusValue]
    var timeoutNanoseconds: UInt64
    var autoStart = true
}

struct OutgoingSignal: Sendable {
    var path: ObjectPath
    var interface: String
    var member: String
    var arguments: [DBusValue]
    var destination: String?
}

struct PendingCall {
    enum Completion {
        /// A caller awaiting the reply, and the address its hand-over is annotated at for TSan
        /// (`CallToken.handoffAddress`).
        case continuation(CheckedContinuation<[DBusValue], any Error>, handoff: UnsafeMutableRawPointer)
        /// Our own follow-up, run on the connection thread in message order (e.g. the reply of
        /// GetNameOwner must be applied before the NameOwnerChanged signals that follow it).
        case callback((LoopState, Result<[DBusValue], any Error>) -> Void)

        func run(_ state: LoopState, _ result: Result<[DBusValue], any Error>) {
            switch self {
            case .continuation(let c, let handoff):
                bgw_tsan_release(handoff)
                c.resume(with: result)
            case .callback(let f): f(state, result)
            }
        }
    }

    let id: UInt64
    let what: String
    let completion: Completion

    func complete(_ state: LoopState, _ result: Result<[DBusValue], any Error>) {
        completion.run(state, result)
    }
}

/// A binary min-heap of call deadlines; entries of answered calls are skipped when they surface.
struct DeadlineHeap {
    struct Entry {
        var deadline: UInt64
        var serial: UInt32
        var id: UInt64
    }
    private var items: [Entry] = []

    var top: Entry? { items.first }

    mutating func push(_ e: Entry) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].deadline < items[parent].deadline else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() {
        guard !items.isEmpty else { return }
        items.swapAt(0, items.count - 1)
        items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var smallest = i
            if l < items.count && items[l].deadline < items[smallest].deadline { smallest = l }
            if r < items.count && items[r].deadline < items[smallest].deadline { smallest = r }
            if smallest == i { return }
            items.swapAt(i, smallest)
            i = smallest
        }
    }
}

enum BusDaemon {
    static let name = "org.freedesktop.DBus"
    static let path = ObjectPath(trusted: "/org/freedesktop/DBus")
    static let interface = "org.freedesktop.DBus"
}

extension Optional where Wrapped == String {
    func withOptionalCString<R>(_ body: (UnsafePointer<CChar>?) -> R) -> R {
        switch self {
        case .some(let s): s.withCString { body($0) }
        case .none: body(nil)
        }
    }
}

// MARK: - libdbus callbacks (C function pointers; `data` is the unretained LoopState)

private func loopState(_ data: UnsafeMutableRawPointer?) -> LoopState? {
    guard let data else { return nil }
    return Unmanaged<LoopState>.fromOpaque(data).takeUnretainedValue()
}

private let loopAddWatch: DBusAddWatchFunction = { watch, data in
    guard let watch, let state = loopState(data) else { return 0 }
    state.addWatch(watch)
    return 1
}
private let loopRemoveWatch: DBusRemoveWatchFunction = { watch, data in
    guard let watch, let state = loopState(data) else { return }
    state.removeWatch(watch)
}
private let loopToggleWatch: DBusWatchToggledFunction = { watch, data in
    guard let watch, let state = loopState(data) else { return }
    state.toggleWatch(watch)
}
private let loopAddTimeout: DBusAddTimeoutFunction = { timeout, data in
    guard let timeout, let state = loopState(data) else { return 0 }
    return state.addTimeout(timeout) ? 1 : 0
}
private let loopRemoveTimeout: DBusRemoveTimeoutFunction = { timeout, data in
    guard let timeout, let state = loopState(data) else { return }
    state.removeTimeout(timeout)
}
private let loopToggleTimeout: DBusTimeoutToggledFunction = { timeout, data in
    guard let timeout, let state = loopState(data) else { return }
    state.toggleTimeout(timeout)
}
