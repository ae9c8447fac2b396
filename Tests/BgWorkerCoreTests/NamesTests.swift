import BgWorkerAPI
import Testing

@testable import BgWorkerCore

@Suite struct NamesTests {
    @Test(arguments: [
        ("db-sync", "db_2dsync"),
        ("dice", "dice"),
        ("9lives", "_39lives"),
        ("a9", "a9"),
        ("x.y@z_w", "x_2ey_40z_5fw"),
        ("", "_"),
        ("é", "_c3_a9"),
    ])
    func objectPathLabels(name: String, label: String) {
        #expect(objectPathLabel(forWorker: name) == label)
        #expect(workerName(fromObjectPathLabel: label) == name)
    }

    @Test func objectPathLabelInverseRejectsNonCanonical() {
        #expect(workerName(fromObjectPathLabel: "_61") == nil)  // 'a' needs no escape
        #expect(workerName(fromObjectPathLabel: "a_2") == nil)
        #expect(workerName(fromObjectPathLabel: "a_2D") == nil)  // uppercase hex
        #expect(workerName(fromObjectPathLabel: "a-b") == nil)
        #expect(workerName(fromObjectPathLabel: "9") == nil)
    }

    /// The contract's worker object paths, spelled out as the contract writes them.
    @Test func workerObjectPaths() {
        #expect(BgWorkerBus.workerPath("db-sync") == "/org/example/BgWorker/worker/db_2dsync")
        #expect(BgWorkerBus.workerName(fromPath: "/org/example/BgWorker/worker/db_2dsync") == "db-sync")
        #expect(BgWorkerBus.workerName(fromPath: "/org/example/BgWorker/worker/_61") == nil)
        #expect(BgWorkerBus.workerName(fromPath: "/org/example/BgWorker") == nil)
        #expect(BgWorkerBus.workerName(fromPath: "/org/example/Other/worker/dice") == nil)
    }

    @Test func labelsRoundTripForEveryValidName() {
        let alphabet = Array("Az09_.@-")
        for first in alphabet {
            for second in alphabet {
                let name = String([first, second])
                let label = objectPathLabel(forWorker: name)
                #expect(isValidObjectPath(BgWorkerBus.workerPathPrefix + label))
                #expect(workerName(fromObjectPathLabel: label) == name)
            }
        }
    }

    @Test(arguments: [
        ("dice", "bgworker-dice.service"),
        ("db-sync", "bgworker-db-sync.service"),
        ("a@b", "bgworker-a\\x40b.service"),
        ("x.y_z:", "bgworker-x.y_z:.service"),
    ])
    func unitNames(name: String, unit: String) {
        #expect(systemdUnitName(forWorker: name) == unit)
        if isValidWorkerName(name) {
            #expect(workerName(fromSystemdUnitName: unit) == name)
        }
    }

    @Test func unitNameInverseRejectsForeignUnits() {
        #expect(workerName(fromSystemdUnitName: "sshd.service") == nil)
        #expect(workerName(fromSystemdUnitName: "bgworker-.service") == nil)
        #expect(workerName(fromSystemdUnitName: "bgworker-a@b.service") == nil)
        #expect(workerName(fromSystemdUnitName: "bgworker-a\\x4.service") == nil)
        #expect(workerName(fromSystemdUnitName: "bgworker-a\\x61.service") == nil)
        #expect(workerName(fromSystemdUnitName: "bgworker-a.scope") == nil)
    }

    @Test func definitionHashIsStableAndCoversProcessFields() {
        var base = WorkerDefinition(name: "dice", exec: ["/bin/sleep", "1"])
        base.environment = ["B": "2", "A": "1"]
        // A fixed value: the hash must not change between runs or builds.
        #expect(base.definitionHash == base.definitionHash)
        #expect(base.definitionHashText.count == 16)
        let pinned = base.definitionHash
        var same = base
        same.environment = ["A": "1", "B": "2"]
        same.enabled = false
        same.runOn = .any
        same.restartDelay = 3
        same.restartDelayMax = 9
        same.stableAfter = 1
        same.startLimitBurst = 1
        same.startLimitInterval = 2
        #expect(same.definitionHash == pinned)
        #expect(!same.processDiffers(from: base))

        var variants: [WorkerDefinition] = []
        func variant(_ change: (inout WorkerDefinition) -> Void) {
            var copy = base
            change(&copy)
            variants.append(copy)
        }
        variant { $0.name = "dice2" }
        variant { $0.exec = ["/bin/sleep", "2"] }
        variant { $0.exec = ["/bin/sleep1"] }
        variant { $0.exec = ["/bin/sleep", "1", ""] }
        variant { $0.environment["C"] = "3" }
        variant { $0.environment = ["A": "12"] }
        variant { $0.environment = ["A1": "2"] }
        variant { $0.workingDirectory = "/" }
        variant { $0.user = "nobody" }
        variant { $0.group = "nogroup" }
        variant { $0.stopTimeout = 6 }
        variant { $0.resources.memoryMax = 1 }
        variant { $0.resources.cpuQuotaPercent = 50 }
        variant { $0.resources.tasksMax = 5 }
        variant { $0.resources.privateTmp = false }
        variant { $0.resources.protectSystem = .off }
        variant { $0.resources.protectHome = .off }
        variant { $0.resources.noNewPrivileges = false }
        let hashes = Set(variants.map(\.definitionHash) + [pinned])
        #expect(hashes.count == variants.count + 1)
        for changed in variants { #expect(changed.processDiffers(from: base)) }
    }

    @Test func hashOfKnownInputIsPinned() {
        // Computed independently (Python) from the documented canonical encoding and FNV-1a 64:
        // if this changes, the systemd runner would see every adopted unit as changed.
        #expect(WorkerDefinition(name: "", exec: []).definitionHashText == "4c1064ed800459aa")
        #expect(WorkerDefinition(name: "", exec: []).definitionHash == 0x4c10_64ed_8004_59aa)
    }
}
