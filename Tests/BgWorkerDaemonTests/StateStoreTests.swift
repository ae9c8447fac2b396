import BgWorkerCore
import Foundation
import Glibc
import Testing
import TestSupport

@testable import BgWorkerDaemon

/// The state file on its own (issue 15): the largest file it accepts loads whole, and a file it
/// cannot use (too large, garbage, not a regular file) is refused at once, kept aside with its
/// content, and never replaced by the next write. Real files, a FIFO, a sparse file.
@Suite(.timeLimit(.minutes(2))) struct StateStoreTests {
    /// `count` intents with 64-byte names (the longest a line can be), every combination of values.
    static func largeState(_ count: Int) -> EnableState {
        var intents: [String: EnableIntent] = [:]
        intents.reserveCapacity(count)
        for i in 0..<count {
            let digits = String(i)
            let name = "w" + String(repeating: "0", count: 63 - digits.count) + digits
            intents[name] = EnableIntent(enabled: i % 2 == 0, configuredEnabled: i % 3 == 0)
        }
        return EnableState(intents: intents)
    }

    static func bytes(of path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map { [UInt8]($0) }
    }

    /// The files `enable-state.broken-*` in `directory`.
    static func keptAside(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasPrefix(StateStore.fileName + ".broken-") }.sorted()
    }

    @Test func aFileAsLargeAsAcceptedLoadsWithEveryIntentIntact() throws {
        let folder = try TemporaryDirectory(prefix: "bgw-state")
        defer { folder.remove() }
        let store = StateStore(directory: folder.path)
        // As many lines (89 to 91 bytes) as fit under the cap, written by the daemon's own writer.
        var count = 0, size = 200
        while true {
            let line = (count % 2 == 0 ? 7 : 8) + 1 + 64 + 1 + (count % 3 == 0 ? 15 : 16) + 1
            guard size + line <= StateStore.maximumSize else { break }
            size += line
            count += 1
        }
        let state = Self.largeState(count)
        try store.save(state)
        var status = stat()
        #expect(stat(store.path, &status) == 0)
        #expect(Int(status.st_size) <= StateStore.maximumSize && Int(status.st_size) > StateStore.maximumSize - 300)

        let loaded = store.load()
        #expect(loaded.problem == nil, "\(String(describing: loaded.problem))")
        #expect(loaded.state.intents.count == count)
        #expect(loaded.state == state)
        #expect(Self.keptAside(in: folder.path).isEmpty)
    }

    @Test func aFileOverTheCapIsRefusedUnreadAndKeptAside() throws {
        let folder = try TemporaryDirectory(prefix: "bgw-state")
        defer { folder.remove() }
        let store = StateStore(directory: folder.path)
        // 1 GiB, sparse: read whole it would take seconds and a gigabyte.
        let fd = open(store.path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        try #require(fd >= 0)
        let head = Array("bgworker-enable-state 1\ndisabled keep-me configured=true\n".utf8)
        #expect(write(fd, head, head.count) == head.count)
        #expect(ftruncate(fd, 1 << 30) == 0)
        close(fd)

        let loaded = store.load()
        guard case .tooLarge(let size)? = loaded.problem else {
            Issue.record("expected tooLarge, got \(String(describing: loaded.problem))")
            return
        }
        #expect(size == 1 << 30)
        #expect(loaded.state == EnableState())
        let aside = try #require(Self.keptAside(in: folder.path).first)
        #expect(try loaded.keptAs?.get() == folder.file(aside))
        #expect(access(store.path, F_OK) != 0, "the refused file is no longer where the next write goes")
        var status = stat()
        #expect(stat(folder.file(aside), &status) == 0 && status.st_size == 1 << 30)
        let message = try #require(loaded.message(path: store.path))
        #expect(message.contains("1073741824 bytes, over the 16 MiB") && message.contains(aside), "\(message)")

        // One byte over the cap is refused too, one byte under is read (and found corrupt here).
        for (size, refused) in [(StateStore.maximumSize + 1, true), (StateStore.maximumSize, false)] {
            let oneOff = StateStore(directory: folder.file("edge-\(size)"))
            makeDirectories(oneOff.directory)
            #expect(FileManager.default.createFile(atPath: oneOff.path, contents: Data(repeating: UInt8(ascii: "x"), count: size)))
            let result = oneOff.load()
            if case .tooLarge? = result.problem { #expect(refused) } else { #expect(!refused, "\(String(describing: result.problem))") }
            #expect(Self.keptAside(in: oneOff.directory).count == 1)
        }
    }

    /// Garbage is refused with one short log line however long its lines, and kept byte for byte.
    @Test(arguments: ["one enormous line", "binary garbage", "valid entries then a bad one"])
    func garbageIsRefusedWithAShortMessageAndKeptByteForByte(kind: String) throws {
        let folder = try TemporaryDirectory(prefix: "bgw-state")
        defer { folder.remove() }
        let store = StateStore(directory: folder.path)
        var content = Array("bgworker-enable-state 1\n".utf8)
        let expected: String
        switch kind {
        case "one enormous line":
            content += Array("disabled ".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: 8 << 20)
            expected = "line 2: malformed entry 'disabled aaaa"
        case "binary garbage":
            var random = SeededRandom(seed: 15)
            content = (0..<(4 << 20)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            content[0] = 0xff  // never a header
            expected = "line 1: expected 'bgworker-enable-state 1'"
        default:
            content = Array(Self.largeState(50_000).encoded().utf8) + Array("enabled bad/name configured=true\n".utf8)
            expected = "line 50003: malformed entry 'enabled bad/name configured=true'"
        }
        #expect(FileManager.default.createFile(atPath: store.path, contents: Data(content)))

        let loaded = store.load()
        #expect(loaded.state == EnableState())
        guard case .corrupt(let error)? = loaded.problem else {
            Issue.record("expected corrupt, got \(String(describing: loaded.problem))")
            return
        }
        #expect(error.description.hasPrefix(expected), "\(error)")
        let message = try #require(loaded.message(path: store.path))
        #expect(message.utf8.count < 600, "one short line: \(message.prefix(1000))")
        #expect(!message.contains("\n") && !message.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f })
        let aside = try #require(Self.keptAside(in: folder.path).first)
        #expect(Self.bytes(of: folder.file(aside)) == content)
        #expect(access(store.path, F_OK) != 0)
    }

    @Test func aFifoOrADirectoryIsNeitherReadNorMoved() throws {
        let folder = try TemporaryDirectory(prefix: "bgw-state")
        defer { folder.remove() }
        let store = StateStore(directory: folder.path)
        // Opened for reading without O_NONBLOCK, a FIFO with no writer blocks the start for ever.
        try #require(mkfifo(store.path, 0o600) == 0)
        var loaded = store.load()
        guard case .notARegularFile("fifo")? = loaded.problem else {
            Issue.record("expected a fifo refused, got \(String(describing: loaded.problem))")
            return
        }
        #expect(loaded.keptAs == nil && loaded.state == EnableState())
        unlink(store.path)

        try #require(mkdir(store.path, 0o755) == 0)
        loaded = store.load()
        guard case .notARegularFile("directory")? = loaded.problem else {
            Issue.record("expected a directory refused, got \(String(describing: loaded.problem))")
            return
        }
        #expect(loaded.keptAs == nil)
        #expect(Self.keptAside(in: folder.path).isEmpty)
    }

    /// Two broken files in the same second: the second kept aside under another name.
    @Test func aFileKeptAsideNeverReplacesAnEarlierOne() throws {
        let folder = try TemporaryDirectory(prefix: "bgw-state")
        defer { folder.remove() }
        let store = StateStore(directory: folder.path)
        #expect(FileManager.default.createFile(atPath: store.path, contents: Data("first\n".utf8)))
        let first = try store.load().keptAs?.get()
        #expect(FileManager.default.createFile(atPath: store.path, contents: Data("second\n".utf8)))
        let second = try store.load().keptAs?.get()
        #expect(first != nil && second != nil && first != second)
        #expect(Self.keptAside(in: folder.path).map { Self.bytes(of: folder.file($0)) ?? [] }.map { String(decoding: $0, as: UTF8.self) }.sorted()
            == ["first\n", "second\n"])
    }

    /// Blank lines and comments alone are an empty state, not a broken file (nothing to keep).
    @Test func aFileOfBlankLinesIsAnEmptyState() throws {
        let folder = try TemporaryDirectory(prefix: "bgw-state")
        defer { folder.remove() }
        let store = StateStore(directory: folder.path)
        #expect(FileManager.default.createFile(atPath: store.path, contents: Data(repeating: UInt8(ascii: "\n"), count: 8 << 20)))
        let loaded = store.load()
        #expect(loaded.problem == nil && loaded.state == EnableState())
        #expect(Self.keptAside(in: folder.path).isEmpty)
    }
}
