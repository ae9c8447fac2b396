import Foundation
import Testing

@testable import BgWorkerDaemon

/// `directoryEntryNames` reads each name in place. Copying the whole `d_name` field of the last
/// record in readdir's buffer read past its end: AddressSanitizer reported it (a
/// heap-buffer-overflow in `ProcStat.all`) in a CI run; under `scripts/sanitize` these fail that way.
@Suite struct DirectoryEntriesTests {
    @Test func everyNameOfAFolderThatFillsReaddirsBufferManyTimes() throws {
        let folder = NSTemporaryDirectory() + "bgw-dirent-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        // Names of every length from 1 to 255 bytes, so that records of every size end the buffer.
        var expected: Set<String> = []
        for index in 0..<1_500 {
            let length = 1 + (index * 37) % 255
            let name = String(String(index).padding(toLength: length, withPad: "x", startingAt: 0).prefix(length))
            guard !expected.contains(name) else { continue }
            #expect(FileManager.default.createFile(atPath: folder + "/" + name, contents: nil))
            expected.insert(name)
        }
        let names = try #require(directoryEntryNames(folder))
        #expect(names.count == expected.count)
        #expect(Set(names) == expected)
    }

    @Test func procListsThisProcessAndAMissingFolderIsNil() {
        for _ in 0..<50 {
            #expect(directoryEntryNames("/proc")?.contains(String(getpid())) == true)
        }
        #expect(directoryEntryNames("/nonexistent-\(getpid())") == nil)
        #expect(ProcStat.all().contains { $0.pid == getpid() })
    }
}
