// Hand-over from a thread of ours (a runner's) to one task on an actor. The consumer may also
// take what is there without waiting (`takeNow`), from the actor's own code: a resumed
// continuation runs on the global pool first in Swift 6.3 and only then hops to the actor, which
// costs a thread wake-up; an actor that is running anyway can skip it.
import Synchronization

/// A queue of elements for one consumer: it waits with `wait()`, then takes them with `takeNow()`
/// on its actor (a consumer that is running anyway may take them without waiting).
final class Mailbox<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var waiter: CheckedContinuation<Bool, Never>?
        var closed = false
    }
    private let state = Mutex(State())

    /// From any thread.
    func post(_ element: Element) {
        let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            guard !state.closed else { return nil }
            state.items.append(element)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: true)
    }

    /// No more elements: `wait()` returns false once what was posted has been taken.
    func close() {
        let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            state.closed = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: true)  // it takes what is left, then `wait()` says false
    }

    /// The elements posted and not yet taken, in order, without waiting.
    func takeNow() -> [Element] {
        state.withLock { state in
            defer { state.items = [] }
            return state.items
        }
    }

    /// Returns true once there may be elements to take, false when closed and empty. Runs on the
    /// caller's isolation, and resumes there.
    func wait(isolation: isolated (any Actor)? = #isolation) async -> Bool {
        await withCheckedContinuation(isolation: isolation) { continuation in
            let ready = state.withLock { state -> Bool? in
                if !state.items.isEmpty { return true }
                if state.closed { return false }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
