// The last output lines of each worker, in memory, for the bus method `Logs` and `bgworkerctl
// status`/`logs`. Written by the output pump's thread, read by bus calls: one lock, held for a
// copy of a few lines at most. Memory is bounded: `log-buffer-lines` lines per configured worker
// (each line at most WorkerOutputPump.maxLineLength bytes); lines of other names are dropped.
import Synchronization

/// One output line: when the daemon read it (µs since the epoch) and its text.
public struct WorkerLogLine: Sendable, Equatable {
    public var time: UInt64
    public var text: String
}

public final class WorkerLogBuffers: Sendable {
    /// A ring of at most `capacity` lines; `next` is where the next line goes once full.
    private struct Ring {
        var capacity: Int
        var lines: [WorkerLogLine] = []
        var next = 0

        mutating func append(_ line: WorkerLogLine) {
            guard capacity > 0 else { return }
            if lines.count < capacity {
                lines.append(line)
            } else {
                lines[next] = line
                next = (next + 1) % capacity
            }
        }

        /// The last `count` lines, oldest first.
        func last(_ count: Int) -> [WorkerLogLine] {
            let ordered = lines.count < capacity ? lines[...] : lines[next...] + lines[..<next]
            return Array(ordered.suffix(count))
        }

        mutating func resize(_ newCapacity: Int) {
            guard newCapacity != capacity else { return }
            lines = last(newCapacity)
            capacity = newCapacity
            next = 0
        }
    }

    private let rings = Mutex<[String: Ring]>([:])

    public init() {}

    /// The capacity of each worker's buffer, by name; buffers of other names are dropped, those
    /// that stay keep their newest lines.
    public func configure(_ capacities: [String: Int]) {
        rings.withLock { rings in
            rings = rings.filter { capacities[$0.key] != nil }
            for (name, capacity) in capacities {
                rings[name, default: Ring(capacity: capacity)].resize(max(0, capacity))
            }
        }
    }

    func append(worker: String, text: Substring) {
        let line = WorkerLogLine(time: wallClockMicroseconds(), text: String(text))
        rings.withLock { rings in
            guard rings[worker] != nil else { return }
            rings[worker]!.append(line)
        }
    }

    /// The worker's last `count` lines, oldest first (none for a name without a buffer).
    public func last(_ count: Int, of worker: String) -> [WorkerLogLine] {
        rings.withLock { $0[worker]?.last(count) ?? [] }
    }
}
