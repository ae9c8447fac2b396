import BgWorkerCore
import DBus
import Logging

/// How to follow one kind of HA manager: its name, the signals that carry its role, and how to
/// read the role (a property, through `org.freedesktop.DBus.Properties.Get`).
struct ManagerProtocol: Sendable {
    /// The well-known name whose owner is the manager.
    var name: String
    /// Signals that tell the role or that the role may have changed (sender = the owner).
    var signalRules: [MatchRule]
    var rolePath: ObjectPath
    var roleInterface: String
    var roleProperty: String
    /// The meaning of a signal matching `signalRules`.
    var interpretSignal: @Sendable (DBusSignal) -> RoleSignalMeaning
    /// The role from the property's value (the variant already unwrapped), with a short reason.
    var interpretRole: @Sendable (DBusValue) -> (role: HARole, why: String)
}

/// Follows a manager on `connection` until the connection ends or the task is cancelled (see
/// `HARoleSource.run`). Failures to subscribe are reported as `.unknown` and retried with a
/// growing delay; they do not end the run while the connection lives.
func followManager(_ manager: ManagerProtocol, on connection: DBusConnection, logger: Logger,
                   report: @escaping @Sendable (HARoleReport) async -> Void) async {
    var retryDelay = Duration.seconds(1)
    var lastFailureReported: String?
    while !Task.isCancelled && connection.isConnected {
        let watch: NameOwnerWatch
        do {
            watch = try await connection.watchNameOwner(manager.name, signals: manager.signalRules, reportingOthers: true)
        } catch {
            guard connection.isConnected, !Task.isCancelled else { return }
            let why = "cannot follow \(manager.name): \(error)"
            logger.error("\(why); trying again in \(retryDelay)")
            if lastFailureReported != why {
                lastFailureReported = why
                await report(HARoleReport(.unknown, why: why))
            }
            do { try await EventLoop.shared.sleep(for: retryDelay) } catch { return }
            retryDelay = min(retryDelay * 2, .seconds(30))
            continue
        }
        await follow(watch, manager, connection: connection, logger: logger, report: report)
        watch.cancel()
        return
    }
}

private func follow(_ watch: NameOwnerWatch, _ manager: ManagerProtocol, connection: DBusConnection, logger: Logger,
                    report: @escaping @Sendable (HARoleReport) async -> Void) async {
    var state = RoleFollowerState(name: manager.name)
    var forgeries = ForgeryLog()

    func perform(_ actions: [RoleFollowerState.Action]) async {
        for action in actions {
            switch action {
            case .report(let r):
                logger.info("HA role \(r.role.rawValue): \(r.why)")
                await report(r)
            case .read:
                do {
                    let id = try watch.callOwner(path: manager.rolePath, interface: "org.freedesktop.DBus.Properties",
                                                 member: "Get", arguments: [.string(manager.roleInterface), .string(manager.roleProperty)],
                                                 timeout: .seconds(10))
                    state.readStarted(id: id)
                } catch {
                    // Only invalid arguments throw here, and ours are constants.
                    logger.error("cannot read \(manager.roleInterface).\(manager.roleProperty): \(error)")
                }
            case .warnIgnored(let sender, let member, let owner):
                await forgeries.warn(sender: sender, member: member, owner: owner, name: manager.name,
                                     connection: connection, logger: logger)
            }
        }
    }

    await perform(state.start(owner: watch.initialOwner))
    for await event in watch {
        switch event {
        case .ownerChanged(_, let new):
            logger.debug("\(manager.name) owner: \(new ?? "none")")
            await perform(state.ownerChanged(to: new))
        case .signal(let signal):
            await perform(state.signal(manager.interpretSignal(signal)))
        case .ignoredSignal(let signal, let owner):
            await perform(state.ignoredSignal(sender: signal.sender, member: signal.member, owner: owner))
        case .ownerReply(let reply):
            let (role, why): (HARole, String)
            switch reply.result {
            case .success(let values):
                if values.count == 1, case .variant(let value) = values[0] {
                    (role, why) = manager.interpretRole(value)
                } else {
                    (role, why) = (.unknown, "\(manager.roleProperty) read returned \(values.map(\.signature))")
                }
            case .failure(let error):
                (role, why) = (.unknown, "\(manager.roleProperty) read failed: \(error)")
            }
            logger.debug("read \(manager.roleProperty) of \(reply.owner ?? "nobody"): \(role.rawValue) (\(why))")
            await perform(state.readFinished(id: reply.id, role: role, why: why))
        }
    }
}

/// Warnings about role signals from connections that do not own the name, with the sender's
/// pid. Bounded: a flood from one connection is named a few times, then counted quietly, so that
/// a local user cannot fill the journal or keep us busy asking the bus for pids.
private struct ForgeryLog {
    private var seen: [String: Int] = [:]
    private static let warningsPerSender = 3
    private static let sendersRemembered = 64

    mutating func warn(sender: String, member: String, owner: String?, name: String,
                       connection: DBusConnection, logger: Logger) async {
        let count = (seen[sender] ?? 0) + 1
        if seen.count >= Self.sendersRemembered && seen[sender] == nil { seen.removeAll() }
        seen[sender] = count
        let ownerText = owner.map { "the owner is \($0)" } ?? "it has no owner"
        guard count <= Self.warningsPerSender else {
            logger.debug("ignored \(member) from \(sender), not the owner of \(name) (\(count) so far)")
            return
        }
        // The pid is best effort: the sender may be gone already.
        let pid = (try? await connection.credentials(of: sender))?.pid
        let pidText = pid.map { " (pid \($0))" } ?? ""
        let more = count == Self.warningsPerSender ? "; further ones from it are logged at debug level" : ""
        var metadata: Logger.Metadata = ["sender": "\(sender)"]
        if let pid { metadata["sender-pid"] = "\(pid)" }
        logger.warning("ignored \(member) from \(sender)\(pidText): not the owner of \(name), \(ownerText)\(more)",
                       metadata: metadata)
    }
}
