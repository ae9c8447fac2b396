// Runs code on a thread with a chosen stack size, as the daemon's own threads have: a test of
// recursion depth must run on the stack the daemon gives, not on the test runner's larger one.
import Glibc

/// Runs `body` on a new thread with a `stackSize`-byte stack and returns its result once it ends.
public func runOnThread<Result: Sendable>(
    stackSize: Int, _ body: @escaping @Sendable () -> Result
) -> Result {
    let slot = ResultSlot<Result>()
    let context = Unmanaged.passRetained(ThreadBody { slot.value = body() }).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setstacksize(&attributes, stackSize)
    var thread = pthread_t()
    // The retained body is released by takeRetainedValue on the new thread, or below when no
    // thread could be created.
    let rc = pthread_create(&thread, &attributes, { raw in
        Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue().run()
        return nil
    }, context)
    guard rc == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(context).release()
        fatalError("pthread_create failed: \(rc)")
    }
    pthread_join(thread, nil)
    return slot.value!
}

private final class ThreadBody: Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Written once by the new thread before it ends and read only after pthread_join, which orders
/// the two accesses: never used concurrently, hence @unchecked.
private final class ResultSlot<Value>: @unchecked Sendable {
    var value: Value?
}
