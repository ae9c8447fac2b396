import Testing

@testable import BgWorkerCore

private let mainPath = "/etc/bgworker/bgworkerd.toml"

private func parse(_ text: String) throws -> Configuration {
    try Configuration.parse(main: SourceFile(path: mainPath, text: text)).get()
}

private func errors(_ text: String) -> [String] {
    switch Configuration.parse(main: SourceFile(path: mainPath, text: text)) {
    case .success: return []
    case .failure(let failure): return failure.errors.map(\.description)
    }
}

/// A host described by a table: the users, groups, programs (path: users who may execute it)
/// and folders it has.
private struct TableHost: WorkerHost {
    var users: Set<String> = ["root", "nobody"]
    var groups: Set<String> = ["root", "nogroup"]
    var programs: [String: Set<String>] = ["/bin/true": ["root", "nobody"], "/usr/sbin/secret": ["root"]]
    var folders: Set<String> = ["/", "/srv"]

    func credentialsProblem(user: String?, group: String?) -> CredentialsProblem? {
        if let group, !groups.contains(group) { return .group("no such group") }
        if let user, !users.contains(user) { return .user("no such user") }
        return nil
    }

    func executableProblem(_ path: String, user: String?, group: String?) -> String? {
        guard let allowed = programs[path] else { return "No such file or directory" }
        return allowed.contains(user ?? "root") ? nil : "not executable by user \(user ?? "root")"
    }

    func directoryProblem(_ path: String) -> String? {
        folders.contains(path) ? nil : "No such file or directory"
    }
}

@Suite struct ConfigurationSuggestionTests {
    @Test func aMistypedKeyGetsTheClosestKnownOne() {
        let text = """
            [daemon]
            log-levle = "info"
            [ha]
            sauce = "none"
            [worker.w]
            exec = ["/bin/true"]
            restart-dealy-max = 5
            stop-timout = 1
            wokring-directory = "/srv"
            completely-unrelated = 1
            [wroker.x]
            """
        #expect(errors(text) == [
            "\(mainPath):2: [daemon] unknown key 'log-levle' (did you mean 'log-level'?)",
            "\(mainPath):4: [ha] unknown key 'sauce' (did you mean 'source'?)",
            "\(mainPath):7: [worker.w] unknown key 'restart-dealy-max' (did you mean 'restart-delay-max'?)",
            "\(mainPath):8: [worker.w] unknown key 'stop-timout' (did you mean 'stop-timeout'?)",
            "\(mainPath):9: [worker.w] unknown key 'wokring-directory' (did you mean 'working-directory'?)",
            "\(mainPath):10: [worker.w] unknown key 'completely-unrelated'",
            "\(mainPath):11: unknown key 'wroker' (did you mean 'worker'?)",
        ])
    }

    @Test(arguments: [
        ("db-synk", ["db-sync", "dice", "mailer"], "db-sync"),
        ("dcie", ["db-sync", "dice", "mailer"], "dice"),
        ("mailr", ["db-sync", "dice", "mailer"], "mailer"),
        ("x", ["db-sync", "dice"], nil),
        ("backup", ["db-sync", "dice"], nil),
        ("dice", ["dice"], nil),
        ("", ["a"], "a"),
    ] as [(String, [String], String?)])
    func closestWorkerName(typed: String, names: [String], expected: String?) {
        #expect(closestMatch(to: typed, among: names) == expected)
    }

    @Test func aHugeNameFromAPeerIsCheapAndMatchesNothing() {
        let huge = String(repeating: "d", count: 1_000_000)
        #expect(closestMatch(to: huge, among: ["dice", "db-sync"]) == nil)
        #expect(didYouMean(huge, among: ["dice"]) == "")
    }
}

@Suite struct ConfigurationHostTests {
    @Test func whatCannotRunIsRefusedAtItsKey() throws {
        let configuration = try parse("""
            [worker.ok]
            exec = ["/bin/true"]
            user = "nobody"
            working-directory = "/srv"
            [worker.missing]
            exec = ["/usr/bin/nothing", "-v"]
            [worker.forbidden]
            user = "nobody"
            exec = ["/usr/sbin/secret"]
            [worker.ghost]
            exec = ["/bin/true"]
            user = "ghost"
            [worker.nogroup]
            exec = ["/bin/true"]
            group = "wheel2"
            [worker.nofolder]
            enabled = false
            exec = ["/bin/true"]
            working-directory = "/srv/gone"
            """)
        let found = configuration.validate(on: TableHost()).map(\.description)
        #expect(found == [
            "\(mainPath):6: [worker.missing] 'exec[0]' /usr/bin/nothing: No such file or directory",
            "\(mainPath):9: [worker.forbidden] 'exec[0]' /usr/sbin/secret: not executable by user nobody",
            "\(mainPath):12: [worker.ghost] 'user' \"ghost\": no such user",
            "\(mainPath):15: [worker.nogroup] 'group' \"wheel2\": no such group",
            "\(mainPath):19: [worker.nofolder] 'working-directory' /srv/gone: No such file or directory",
        ])
        let keys = configuration.validate(on: TableHost()).map(\.key)
        #expect(keys == ["exec", "exec", "user", "group", "working-directory"])
    }

    @Test func aHostWithEverythingFindsNothing() throws {
        let configuration = try parse("[worker.ok]\nexec = [\"/bin/true\"]\n")
        #expect(configuration.validate(on: TableHost()).isEmpty)
    }
}

@Suite struct ConfigurationLogBufferTests {
    @Test func logBufferLinesDefaultsToTheDaemonsAndEachWorkerMaySetItsOwn() throws {
        #expect(try parse("[worker.a]\nexec = [\"/bin/true\"]\n").logBufferLines == ["a": 200])
        let configuration = try parse("""
            [daemon]
            log-buffer-lines = 50
            [worker.a]
            exec = ["/bin/true"]
            [worker.b]
            exec = ["/bin/true"]
            log-buffer-lines = 0
            """)
        #expect(configuration.logBufferLines == ["a": 50, "b": 0])
        let b = try #require(configuration.worker(named: "b"))
        var unchanged = b
        unchanged.logBufferLines = 7
        #expect(!b.processDiffers(from: unchanged), "a new buffer size restarts nothing")
    }

    @Test func logBufferLinesIsBounded() {
        #expect(errors("[daemon]\nlog-buffer-lines = 10001\n") == ["\(mainPath):2: [daemon] 'log-buffer-lines' is too large"])
        #expect(errors("[worker.a]\nexec = [\"/bin/true\"]\nlog-buffer-lines = -1\n")
                == ["\(mainPath):3: [worker.a] 'log-buffer-lines' must not be negative"])
    }
}
