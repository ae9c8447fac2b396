import BgWorkerCore

/// What one HA manager's message means for the role, as its source reads it.
enum RoleSignalMeaning: Equatable, Sendable {
    /// The role is now this.
    case role(HARole, why: String)
    /// The manager says its state may have changed without saying how (keepalived's
    /// `VrrpStarted`/`VrrpReloaded`): read the role anew.
    case readAgain(why: String)
}

/// The decisions of a role source, apart from the bus: events in (in the order the bus
/// delivered them), actions out. Kept pure so that every interleaving can be tested.
///
/// Reads and signals cannot race:
/// - The read goes to the owner and its reply comes back in the same ordered stream as the
///   owner's signals (`NameOwnerWatch.callOwner`). The bus keeps one sender's messages in order,
///   so a signal after the reply is newer than the reply and is applied after it.
/// - A role signal that arrives while a read is in flight settles the question: the read's
///   result is dropped when it comes. A manager signals every change, so the signal is at least
///   as new as anything the read can say; and a manager that answered from a snapshot taken
///   before the change (a threaded one could) cannot undo the change with its late reply.
/// - A reply to a read made for an owner that has since gone, or superseded by a later read, is
///   dropped: each read carries an id, and only the pending one counts.
struct RoleFollowerState: Sendable {
    enum Action: Equatable, Sendable {
        /// Report this role (already deduplicated: only changes, and the first report).
        case report(HARoleReport)
        /// Read the role from the current owner; answer with `readStarted(id:)`.
        case read
        /// A role signal from someone who is not the owner: log it, nothing else.
        case warnIgnored(sender: String, member: String, owner: String?)
    }

    /// The manager's well-known name, for the reasons given with reports.
    let name: String
    private(set) var owner: String?
    /// The id of the read in flight for the current owner, if any.
    private(set) var pendingRead: UInt64?
    private(set) var lastReported: HARole?

    init(name: String) { self.name = name }

    /// The watch is in place (subscribed, owner known): read, or report that nobody is there.
    mutating func start(owner: String?) -> [Action] {
        self.owner = owner
        if owner == nil { return report(.unknown, why: "\(name) has no owner") }
        return [.read]
    }

    mutating func readStarted(id: UInt64) { pendingRead = id }

    mutating func ownerChanged(to new: String?) -> [Action] {
        owner = new
        pendingRead = nil
        guard new != nil else { return report(.unknown, why: "\(name) has no owner") }
        // A manager that gains its name may have signalled before (keepalived does), when its
        // signals did not count: what it says now is only known by asking.
        return [.read]
    }

    mutating func signal(_ meaning: RoleSignalMeaning) -> [Action] {
        switch meaning {
        case .role(let role, let why):
            pendingRead = nil
            return report(role, why: why)
        case .readAgain:
            return [.read]
        }
    }

    mutating func ignoredSignal(sender: String, member: String, owner: String?) -> [Action] {
        [.warnIgnored(sender: sender, member: member, owner: owner)]
    }

    /// A read came back: `role` as read, or `.unknown` with the failure as `why`.
    mutating func readFinished(id: UInt64, role: HARole, why: String) -> [Action] {
        guard id == pendingRead else { return [] }   // for an owner since gone, or superseded
        pendingRead = nil
        return report(role, why: why)
    }

    private mutating func report(_ role: HARole, why: String) -> [Action] {
        guard role != lastReported else { return [] }
        lastReported = role
        return [.report(HARoleReport(role, why: why))]
    }
}
