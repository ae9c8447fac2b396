// Following one transient unit from the signals systemd sends: its start job's end (JobRemoved)
// and its properties (PropertiesChanged on the unit's object, Unit and Service interfaces).
// Pure: the runner feeds it what arrived, in bus order, and carries out the outcomes.
//
// Facts it relies on (systemd 252, seen in tests):
// - systemd flushes a unit's pending PropertiesChanged before the JobRemoved of its job
//   (bus_job_send_removed_signal), so when a start job ends "done" the unit's MainPID is known.
// - A new unit's first PropertiesChanged can read `inactive`/`dead` while its start job runs, so
//   states seen before the start job ended say nothing about an exit.
// - When the main process ends, the Service interface's ExecMainCode/ExecMainStatus change in
//   the same flush as, or before, the Unit interface's ActiveState `inactive` or `failed`; with
//   KillMode=control-group the unit stays `deactivating` until the rest of its cgroup is gone.

import BgWorkerCore
import DBus

/// The last values systemd announced for the unit properties the runner follows.
struct UnitStatus: Sendable, Equatable {
    var activeState = ""
    var subState = ""
    /// The Service's `Result`: `success`, `exit-code`, `signal`, `core-dump`, `timeout`, ...
    var result = ""
    var mainPID: UInt32 = 0
    var execMainPID: UInt32 = 0
    /// `CLD_EXITED` = 1, `CLD_KILLED` = 2, `CLD_DUMPED` = 3; 0 before the main process ended.
    var execMainCode: Int32 = 0
    var execMainStatus: Int32 = 0
    /// The Service's `Environment` (read at adoption; carries the definition hash).
    var environment: [String] = []
    /// The Service's `StatusText`: the worker's last `STATUS=` (Type=notify, NotifyAccess=all).
    var statusText = ""

    /// Takes the values of a PropertiesChanged's `a{sv}` (or a GetAll). Unknown names and values
    /// of an unexpected type are ignored: a peer's odd message must not crash us.
    mutating func apply(_ changed: [String: DBusValue]) {
        for (key, wrapped) in changed {
            let value = wrapped.unwrappingVariant
            switch key {
            case "ActiveState": if let v = value.stringValue { activeState = v }
            case "SubState": if let v = value.stringValue { subState = v }
            case "Result": if let v = value.stringValue { result = v }
            case "MainPID": if let v = value.uint32Value { mainPID = v }
            case "ExecMainPID": if let v = value.uint32Value { execMainPID = v }
            case "ExecMainCode": if let v = value.int32Value { execMainCode = v }
            case "ExecMainStatus": if let v = value.int32Value { execMainStatus = v }
            case "Environment": if let v = value.stringArrayValue { environment = v }
            case "StatusText": if let v = value.stringValue { statusText = v }
            default: break
            }
        }
    }

    /// The unit has ended: nothing of it runs any more.
    var hasEnded: Bool { activeState == "inactive" || activeState == "failed" }

    /// How the main process ended; `watchdog` when systemd killed it for its watchdog.
    var exit: WorkerExit {
        if result == "watchdog" { return .watchdog }
        return switch execMainCode {
        case 1: .exited(execMainStatus)
        case 2: .killed(execMainStatus)
        case 3: .dumped(execMainStatus)
        // systemd recorded no end of a main process (never seen with Type=exec once the start
        // job is done); the unit is gone all the same.
        default: .killed(9)
        }
    }

    /// `exited with status 203 (EXEC)`, `killed by SIGSEGV`, or nil before the main process ended.
    var exitText: String? {
        guard (1...3).contains(execMainCode) else { return nil }
        if execMainCode == 1, let meaning = systemdExitStatusName(execMainStatus) {
            return "exited with status \(execMainStatus) (\(meaning))"
        }
        return exit.reason
    }
}

/// The names systemd gives the exit statuses its own service setup uses (systemd.exec(5),
/// "Process Exit Codes"), e.g. 203 `EXEC`: the program could not be executed.
func systemdExitStatusName(_ status: Int32) -> String? {
    let names: [Int32: String] = [
        200: "CHDIR", 201: "NICE", 202: "FDS", 203: "EXEC", 204: "MEMORY", 205: "LIMITS",
        206: "OOM_ADJUST", 207: "SIGNAL_MASK", 208: "STDIN", 209: "STDOUT", 210: "CHROOT",
        211: "IOPRIO", 212: "TIMERSLACK", 213: "SECUREBITS", 214: "SETSCHEDULER",
        215: "CPUAFFINITY", 216: "GROUP", 217: "USER", 218: "CAPABILITIES", 219: "CGROUP",
        220: "SETSID", 221: "CONFIRM", 222: "STDERR", 224: "PAM", 225: "NETWORK", 226: "NAMESPACE",
        227: "NO_NEW_PRIVILEGES", 228: "SECCOMP", 229: "SELINUX_CONTEXT", 230: "PERSONALITY",
        231: "APPARMOR", 232: "ADDRESS_FAMILIES", 233: "RUNTIME_DIRECTORY", 235: "CHOWN",
        236: "SMACK_PROCESS_LABEL", 237: "KEYRING", 238: "STATE_DIRECTORY", 239: "CACHE_DIRECTORY",
        240: "LOGS_DIRECTORY", 241: "CONFIGURATION_DIRECTORY", 242: "NUMA_POLICY",
        243: "CREDENTIALS", 245: "BPF",
    ]
    return names[status]
}

/// One unit's life as the runner sees it: starting (its start job runs), running (with the pid
/// the runner reported), ended.
struct UnitTracker: Sendable, Equatable {
    enum Phase: Sendable, Equatable {
        /// The start job was asked for and has not ended yet (or, for a unit found at adoption,
        /// the runner has not read its state yet).
        case starting
        /// Started (or adopted) with this main pid; its end is the worker's exit.
        case running(pid: Int32)
        case ended
    }

    enum Outcome: Sendable, Equatable {
        /// The start job ended `done`: the worker runs with this pid.
        case started(pid: Int32)
        /// The start job ended otherwise; the text says why, in systemd's words.
        case startFailed(String)
        /// The running unit ended.
        case exited(pid: Int32, WorkerExit)
        /// The unit is `active` (at its start: a Type=notify worker sent READY=1), or active
        /// again after `reloading`.
        case ready(pid: Int32)
        /// The running unit went `reloading` (RELOADING=1).
        case reloading(pid: Int32)
        /// The running unit went `deactivating` (STOPPING=1, or a stop).
        case stopping(pid: Int32)
        /// The unit's `StatusText` changed.
        case status(pid: Int32, String)
        /// The start job is done but no pid was announced: read the Service's properties and
        /// pass them to `propertiesRead`.
        case needsProperties
    }

    private(set) var phase: Phase = .starting
    private(set) var status = UnitStatus()
    /// The start job's object path, once StartTransientUnit answered.
    private(set) var startJob: String?
    /// Results of this unit's jobs that ended before StartTransientUnit's reply was seen.
    private var endedJobs: [String: String] = [:]
    /// The start job ended `done`, but its pid is not known yet.
    private var awaitingPid = false
    /// A Type=notify unit: its start is answered once its main process runs, not when its start
    /// job ends (READY=1, which may take up to start-timeout: the runner's one command queue and
    /// the daemon's own READY=1 would wait that long, with the worker's pid unknown).
    private let notify: Bool
    /// A notify unit answered as started whose READY=1 has not come yet.
    private var awaitingReady = false

    init(notify: Bool = false) { self.notify = notify }

    /// A PropertiesChanged of the unit's object.
    mutating func propertiesChanged(_ changed: [String: DBusValue]) -> [Outcome] {
        let before = status
        status.apply(changed)
        if awaitingPid { return startDone() }
        if phase == .starting { return notifyStarted() }
        guard case .running(let pid) = phase else { return [] }
        if status.hasEnded {
            phase = .ended
            // systemd stopped it for want of READY=1 within TimeoutStartUSec.
            return [.exited(pid: pid, awaitingReady && status.result == "timeout" ? .startTimeout : status.exit)]
        }
        var outcomes: [Outcome] = []
        if status.statusText != before.statusText { outcomes.append(.status(pid: pid, status.statusText)) }
        if status.activeState != before.activeState {
            switch status.activeState {
            case "reloading": outcomes.append(.reloading(pid: pid))
            case "active" where before.activeState == "reloading" || awaitingReady:
                awaitingReady = false
                outcomes.append(.ready(pid: pid))
            // Only a STOPPING=1 is reported; systemd's own stops are not, since the process runner
            // goes from running to the exit there: before READY=1 (its start timeout, ours; it acts
            // on a STOPPING=1 sent while activating only at READY=1), its watchdog kill
            // (`stop-watchdog`), and the stop of what is left in the cgroup once the main process
            // ended (its end is announced first, in the Service's flush).
            case "deactivating" where !awaitingReady && status.subState != "stop-watchdog" && status.execMainCode == 0:
                outcomes.append(.stopping(pid: pid))
            default: break
            }
        }
        return outcomes
    }

    /// The answer to `needsProperties`: the Service's (and Unit's) current properties.
    mutating func propertiesRead(_ values: [String: DBusValue]) -> [Outcome] {
        status.apply(values)
        guard awaitingPid else { return propertiesChanged([:]) }
        awaitingPid = false
        let pid = status.mainPID != 0 ? status.mainPID : status.execMainPID
        guard pid != 0, let pid = Int32(exactly: pid) else {
            phase = .ended
            return [.startFailed("the start job is done but systemd reports no main process")]
        }
        return enterRunning(pid: pid)
    }

    /// A JobRemoved for this unit.
    mutating func jobRemoved(job: String, result: String) -> [Outcome] {
        guard phase == .starting else { return [] }
        guard let startJob else {
            endedJobs[job] = result
            return []
        }
        return job == startJob ? startJobEnded(result) : []
    }

    /// StartTransientUnit answered with the start job's path.
    mutating func startJobCreated(_ job: String) -> [Outcome] {
        guard phase == .starting, startJob == nil else { return [] }
        startJob = job
        if let result = endedJobs.removeValue(forKey: job) { return startJobEnded(result) }
        endedJobs = [:]
        return notifyStarted()
    }

    /// A notify unit whose main process runs while its start job waits for READY=1: answered as
    /// started (the process runner's answer comes after the exec too; the state stays `starting`).
    /// Only once the start job is known, so the answer has a caller to go to.
    private mutating func notifyStarted() -> [Outcome] {
        guard notify, phase == .starting, startJob != nil, status.activeState == "activating", status.mainPID != 0,
              let pid = Int32(exactly: status.mainPID)
        else { return [] }
        phase = .running(pid: pid)
        awaitingReady = true
        var outcomes: [Outcome] = [.started(pid: pid)]
        if !status.statusText.isEmpty { outcomes.append(.status(pid: pid, status.statusText)) }
        return outcomes
    }

    /// The runner adopts this unit, running `pid`: its end is the worker's exit from now on.
    mutating func adopted(pid: Int32) -> [Outcome] {
        guard phase == .starting else { return [] }
        phase = .running(pid: pid)
        if status.hasEnded {
            phase = .ended
            return [.exited(pid: pid, status.exit)]
        }
        // The worker's last STATUS=, as read with the unit's state, and a reload in progress.
        var outcomes: [Outcome] = status.statusText.isEmpty ? [] : [.status(pid: pid, status.statusText)]
        if status.activeState == "reloading" { outcomes.append(.reloading(pid: pid)) }
        return outcomes
    }

    /// A unit found at adoption that the runner stops: followed until it ends, whatever runs in it.
    mutating func leaving() -> [Outcome] {
        guard phase == .starting else { return [] }
        let pid = Int32(bitPattern: status.mainPID)
        phase = .running(pid: pid)
        if status.hasEnded {
            phase = .ended
            return [.exited(pid: pid, status.exit)]
        }
        return []
    }

    /// The unit can no longer be read (a new bus connection found nothing to read): if it ran,
    /// that is its end, with a status nobody can know any more (reported as SIGKILL).
    mutating func lost() -> [Outcome] {
        defer { phase = .ended }
        guard case .running(let pid) = phase else { return [] }
        return [.exited(pid: pid, .killed(9))]
    }

    /// The runner gives up on the unit (its start was refused, the bus went away).
    mutating func abandon() { phase = .ended }

    private mutating func startJobEnded(_ result: String) -> [Outcome] {
        guard result == "done" else {
            phase = .ended
            // With Type=exec, a program that dies right after its execve can end before systemd
            // has seen the exec succeed: the start job then fails, though the program ran. When
            // the main process ended by a signal, or with a status that is not one of systemd's
            // own set-up failures (200-245), it did run: report a start and an exit, as the
            // process runner would.
            if status.hasEnded, programRan, status.execMainPID != 0, let pid = Int32(exactly: status.execMainPID) {
                // Type=notify without READY=1 within TimeoutStartUSec (its pid not seen while
                // activating): systemd stopped the unit, its Result is "timeout" (the job's "failed").
                return [.started(pid: pid), .exited(pid: pid, status.result == "timeout" ? .startTimeout : status.exit)]
            }
            return [.startFailed(failureText(jobResult: result))]
        }
        return startDone()
    }

    /// The main process's end shows the program itself ran (not a failure of systemd's set-up).
    private var programRan: Bool {
        switch status.execMainCode {
        case 2, 3: true
        case 1: systemdExitStatusName(status.execMainStatus) == nil
        default: false
        }
    }

    private mutating func startDone() -> [Outcome] {
        let pid = status.mainPID != 0 ? status.mainPID : status.execMainPID
        guard pid != 0, let pid = Int32(exactly: pid) else {
            awaitingPid = true
            return [.needsProperties]
        }
        awaitingPid = false
        return enterRunning(pid: pid)
    }

    private mutating func enterRunning(pid: Int32) -> [Outcome] {
        phase = .running(pid: pid)
        var outcomes: [Outcome] = [.started(pid: pid)]
        if !status.statusText.isEmpty { outcomes.append(.status(pid: pid, status.statusText)) }
        // A start job is done once the unit is active: for Type=notify, after READY=1.
        outcomes.append(.ready(pid: pid))
        // Only when systemd's order was broken (a read after the fact): it ran and ended already.
        if status.hasEnded && status.execMainCode != 0 {
            phase = .ended
            outcomes.append(.exited(pid: pid, status.exit))
        }
        return outcomes
    }

    /// e.g. `start job failed: exit-code, main process exited with status 203 (EXEC)`.
    private func failureText(jobResult: String) -> String {
        var text = "start job \(jobResult)"
        var details: [String] = []
        if !status.result.isEmpty && status.result != "success" { details.append(status.result) }
        if let exit = status.exitText { details.append("main process \(exit)") }
        if !details.isEmpty { text += ": " + details.joined(separator: ", ") }
        return text
    }
}
