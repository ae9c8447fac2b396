import DBus
import Foundation
import Glibc
import Testing
import TestSupport

@testable import BgWorkerDaemon

/// The inhibitor table on its own: its bound, its FIFOs and their descriptions, and what a new
/// table (a restarted daemon) takes back. Real pipes, FIFOs and files.
@Suite struct InhibitorTableTests {
    @Test func theNumberOfInhibitorsIsBoundedWithLimitsExceeded() throws {
        var table = InhibitorTable()
        #expect(table.limit > 0 && table.limit <= 4096)
        var ends: [UnixFD] = []
        defer { for inhibitor in table.held { close(inhibitor.readFD) } }
        for i in 0..<table.limit {
            let (inhibitor, writeEnd) = try table.make(who: "w\(i)", why: "bound", uid: 0, pid: 1, since: 1)
            table.add(inhibitor)
            ends.append(writeEnd)
        }
        #expect(throws: DBusError.self) { try table.make(who: "one more", why: "bound", uid: 0, pid: 1, since: 1) }
        do {
            _ = try table.make(who: "one more", why: "bound", uid: 0, pid: 1, since: 1)
        } catch {
            #expect(error.name == "org.freedesktop.DBus.Error.LimitsExceeded", "\(error)")
        }
        // Too long a who: InvalidArgs, before anything is opened.
        var small = InhibitorTable()
        #expect(throws: DBusError.invalidArgs("who and why may have at most 256 bytes each")) {
            try small.make(who: String(repeating: "x", count: 257), why: "", uid: 0, pid: 0, since: 0)
        }
    }

    @Test func aNewTableTakesBackHeldFIFOsAndDropsTheRest() throws {
        let folder = try TemporaryDirectory(prefix: "bgw-inhibitors")
        defer { folder.remove() }
        let directory = folder.file("inhibitors")
        var first = InhibitorTable(directory: directory)
        #expect(first.load().isEmpty)
        let who = "ops \\ team\nline two"
        let (kept, keptEnd) = try first.make(who: who, why: "why: \u{1F527}", uid: 1000, pid: 4242, since: 1_700_000_000_000_000)
        let (gone, goneEnd) = try first.make(who: "gone", why: "its holder closed it", uid: 0, pid: 7, since: 1_700_000_000_000_001)
        first.add(kept)
        first.add(gone)
        goneEnd.close()
        // The first daemon ends: its read ends go, the holder of `kept` still has its write end.
        for inhibitor in first.held { close(inhibitor.readFD) }
        try "junk".write(toFile: "\(directory)/99.fifo", atomically: true, encoding: .utf8)

        var second = InhibitorTable(directory: directory)
        #expect(second.load().isEmpty)
        defer { for inhibitor in second.held { close(inhibitor.readFD) } }
        #expect(second.held.map(\.who) == [who, "gone"])
        let back = try #require(second.held.first)
        #expect(back.why == "why: \u{1F527}" && back.uid == 1000 && back.pid == 4242 && back.since == 1_700_000_000_000_000)
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/99.fifo"), "a FIFO without a description is removed")
        // The one whose holder is gone reads as such at once (the new table's own write end
        // opened and closed); the held one does not.
        #expect(InhibitorTable.writersGone(second.held[1].readFD, events: 0))
        #expect(!InhibitorTable.writersGone(back.readFD, events: 0))
        keptEnd.close()
        #expect(InhibitorTable.writersGone(back.readFD, events: 0))
        // A new inhibitor gets an id past the taken-back ones.
        let (next, nextEnd) = try second.make(who: "next", why: "", uid: 0, pid: 0, since: 2)
        #expect(next.id > second.held.map(\.id).max() ?? 0)
        nextEnd.close()
        close(next.readFD)
        for id in second.held.map(\.id) { _ = second.remove(id) }
        let left = try FileManager.default.contentsOfDirectory(atPath: directory).filter { !$0.hasPrefix("\(next.id).") }
        #expect(left.isEmpty, "\(left)")
    }

    /// scripts/adversarial/maintenance.py step 8: a who and a why ending in CR (the description's
    /// "\r\n" read as one Character: no line break, the inhibitor dropped by the next daemon)
    /// and a combining mark after a newline (it fused with the escape's `n`: "ń").
    @Test func whoAndWhyWithCarriageReturnsAndCombiningMarksOutliveARestart() throws {
        let folder = try TemporaryDirectory(prefix: "bgw-inhibitors")
        defer { folder.remove() }
        let directory = folder.file("inhibitors")
        var first = InhibitorTable(directory: directory)
        _ = first.load()
        let texts = [("upgrade\r", "apt\r"), ("a\n\u{301}b", "\\\n\u{301}\r\n\\")]
        var ends: [UnixFD] = []
        for (index, (who, why)) in texts.enumerated() {
            let (inhibitor, end) = try first.make(who: who, why: why, uid: 0, pid: 1, since: UInt64(index))
            first.add(inhibitor)
            ends.append(end)
        }
        for inhibitor in first.held { close(inhibitor.readFD) }
        var second = InhibitorTable(directory: directory)
        _ = second.load()
        defer { for inhibitor in second.held { close(inhibitor.readFD) } }
        #expect(second.held.map { [$0.who, $0.why] } == texts.map { [$0.0, $0.1] })
        for end in ends { end.close() }
    }
}
