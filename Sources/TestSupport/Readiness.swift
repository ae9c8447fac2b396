import CShims
import Glibc
import Synchronization

/// Waits until `fd` is readable (data, end of file, a pidfd's process gone) or `timeout` passes;
/// returns false on timeout. The wait runs on a thread of its own (never on the cooperative pool)
/// and is cancellable: cancelling the task wakes that thread at once through a pipe, so task groups
/// that race a wait against another event end when the event comes, not at the wait's deadline.
public func awaitReadable(_ fd: Int32, timeout: Duration) async throws -> Bool {
    var wake: [Int32] = [-1, -1]
    guard _bgw_pipe_cloexec(&wake) == 0 else { throw TestProcessError("pipe2: \(errno)") }
    let (wakeRead, wakeWrite) = (wake[0], wake[1])
    // Closed once the thread is done; a late cancellation must not write to a reused fd number.
    let wakeOpen = Mutex(true)
    defer {
        wakeOpen.withLock { open in
            close(wakeRead)
            close(wakeWrite)
            open = false
        }
    }
    let ms = milliseconds(timeout)
    let readable = await withTaskCancellationHandler {
        await onThread { () -> Bool in
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let deadline = ContinuousClock.now + timeout
            var left = ms
            while true {
                let rc = poll(&fds, 2, left)
                if rc < 0 && errno == EINTR {
                    left = milliseconds(max(deadline - ContinuousClock.now, .zero))
                    continue
                }
                return rc > 0 && fds[0].revents != 0
            }
        }
    } onCancel: {
        wakeOpen.withLock { open in
            if open {
                var byte: UInt8 = 1
                _ = write(wakeWrite, &byte, 1)
            }
        }
    }
    try Task.checkCancellation()
    return readable
}
