// Tests read a runner's events as one stream per runner, made on first use (the runner has one
// event handler, see `WorkerRunner.setEventHandler`; `eventStream()` sets it).
import BgWorkerDaemon
import Synchronization

private let streams = Mutex<[ObjectIdentifier: (runner: AnyObject, events: AsyncStream<RunnerEvent>)]>([:])

private func events(of runner: some WorkerRunner & AnyObject) -> AsyncStream<RunnerEvent> {
    // The runner is kept with its stream, so its identifier is never reused by another runner.
    streams.withLock { streams in
        if let known = streams[ObjectIdentifier(runner)] { return known.events }
        let events = runner.eventStream()
        streams[ObjectIdentifier(runner)] = (runner, events)
        return events
    }
}

extension ProcessRunner {
    var events: AsyncStream<RunnerEvent> { BgWorkerDaemonTests.events(of: self) }
}

extension SystemdRunner {
    var events: AsyncStream<RunnerEvent> { BgWorkerDaemonTests.events(of: self) }
}
