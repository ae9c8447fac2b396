import Synchronization

/// A value that one producer updates from real events (lines of a monitor, signals) and that
/// tests wait on: `wait(until:)` returns as soon as the value satisfies the condition, checking
/// it now and at every update, never on a timer. The deadline only bounds the wait.
public final class WatchedValue<Value: Sendable>: Sendable {
    private struct Waiter {
        let condition: @Sendable (Value) -> Bool
        let continuation: CheckedContinuation<Value, any Error>
    }
    private struct State {
        var value: Value
        var waiters: [UInt64: Waiter] = [:]
        var nextID: UInt64 = 0
        var finished: String?  // why no more updates will come
    }
    private let state: Mutex<State>

    public init(_ initial: Value) { state = Mutex(State(value: initial)) }

    /// The current value.
    public var value: Value { state.withLock { $0.value } }

    /// Changes the value and wakes every waiter whose condition now holds.
    public func update(_ change: (inout Value) -> Void) {
        let woken = state.withLock { s -> [(CheckedContinuation<Value, any Error>, Value)] in
            change(&s.value)
            let value = s.value
            let ready = s.waiters.filter { $0.value.condition(value) }
            for id in ready.keys { s.waiters[id] = nil }
            return ready.values.map { ($0.continuation, value) }
        }
        for (continuation, value) in woken { continuation.resume(returning: value) }
    }

    /// No more updates will come (the producer ended): pending and later waits whose condition
    /// does not already hold fail at once with `reason`.
    public func finish(_ reason: String) {
        let pending = state.withLock { s -> [Waiter] in
            s.finished = reason
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for w in pending { w.continuation.resume(throwing: TestProcessError(reason)) }
    }

    /// Waits until `condition` holds for the value; returns that value. Throws at the deadline
    /// (naming `what`), or when the producer finished first.
    @discardableResult
    public func wait(
        _ what: String, timeout: Duration = .seconds(10), until condition: @escaping @Sendable (Value) -> Bool
    ) async throws -> Value {
        let id = state.withLock { s -> UInt64 in s.nextID += 1; return s.nextID }
        return try await withDeadline(timeout, orThrow: {
            TestProcessError("timed out after \(timeout) waiting for \(what); last value: \(self.value)")
        }) {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    let immediate = self.state.withLock { s -> Result<Value, any Error>? in
                        if condition(s.value) { return .success(s.value) }
                        if let reason = s.finished {
                            return .failure(TestProcessError("\(reason) before \(what)"))
                        }
                        if Task.isCancelled { return .failure(CancellationError()) }
                        s.waiters[id] = Waiter(condition: condition, continuation: continuation)
                        return nil
                    }
                    if let immediate { continuation.resume(with: immediate) }
                }
            } onCancel: {
                let waiter = self.state.withLock { s -> Waiter? in
                    defer { s.waiters[id] = nil }
                    return s.waiters[id]
                }
                waiter?.continuation.resume(throwing: CancellationError())
            }
        }
    }
}
