import Testing

@testable import BgWorkerCore

private let mainPath = "/etc/bgworker/bgworkerd.toml"

private func load(_ text: String, dropIns: [SourceFile] = []) -> Result<Configuration, ConfigErrors> {
    Configuration.parse(main: SourceFile(path: mainPath, text: text), dropIns: dropIns)
}

private func errors(_ text: String, dropIns: [SourceFile] = []) -> [String] {
    switch load(text, dropIns: dropIns) {
    case .success: return []
    case .failure(let failure): return failure.errors.map(\.description)
    }
}

private func worker(_ body: String, name: String = "w") throws -> WorkerDefinition {
    let configuration = try load("[worker.\(name)]\nexec = [\"/bin/true\"]\n" + body).get()
    return try #require(configuration.worker(named: name))
}

/// The single error for a worker body (the body starts on line 3).
private func workerError(_ body: String) -> [String] {
    errors("[worker.w]\nexec = [\"/bin/true\"]\n" + body)
}

@Suite struct ConfigurationDefaultsTests {
    @Test func emptyFileHasContractDefaults() throws {
        let configuration = try load("").get()
        #expect(configuration.daemon.logLevel == .info)
        #expect(configuration.daemon.runner == .auto)
        #expect(configuration.daemon.stateDirectory == "/var/lib/bgworker")
        #expect(configuration.daemon.adminGroup == nil)
        #expect(configuration.daemon.workersDirectory == "workers.d")
        #expect(configuration.ha == HASettings(source: .none, onLost: .stop))
        #expect(configuration.workers.isEmpty)
    }

    @Test func workerDefaults() throws {
        let definition = try worker("")
        #expect(definition.exec == ["/bin/true"])
        #expect(definition.enabled)
        #expect(definition.runOn == .primary)
        #expect(definition.restartDelay == 1.0)
        #expect(definition.restartDelayMax == 60.0)
        #expect(definition.stableAfter == 10.0)
        #expect(definition.startLimitBurst == 5)
        #expect(definition.startLimitInterval == 60.0)
        #expect(definition.stopTimeout == 5.0)
        #expect(definition.environment == [:])
        #expect(definition.workingDirectory == nil)
        #expect(definition.user == nil)
        #expect(definition.group == nil)
        #expect(definition.resources.isEmpty)
        #expect(definition.logLevel == nil)
        #expect(try worker("log-level = \"debug\"").logLevel == .debug)
        #expect(!definition.runDuringMaintenance)
        #expect(try worker("run-during-maintenance = true").runDuringMaintenance)
        #expect(try !worker("run-during-maintenance = false").runDuringMaintenance)
    }

    @Test func runDuringMaintenanceIsNotPartOfTheProcess() throws {
        let plain = try worker("")
        let exempt = try worker("run-during-maintenance = true")
        #expect(!plain.processDiffers(from: exempt))
        #expect(plain.definitionHash == exempt.definitionHash)
    }

    @Test func readinessKeys() throws {
        let plain = try worker("")
        #expect(plain.ready == .exec && plain.startTimeout == 90 && plain.watchdog == 0 && !plain.usesNotify)
        let notify = try worker("ready = \"notify\"\nstart-timeout = 2.5\nwatchdog = 10")
        #expect(notify.ready == .notify && notify.startTimeout == 2.5 && notify.watchdog == 10 && notify.usesNotify)
        #expect(try worker("watchdog = 1").usesNotify, "a watchdog alone needs the socket too")
        // Part of the process (a restart applies them), but the hash of a worker that sets none
        // is what it was before they existed: the systemd runner's adopted units stay adopted.
        #expect(plain.processDiffers(from: notify))
        #expect(plain.definitionHash == (try worker("ready = \"exec\"\nwatchdog = 0\nstart-timeout = 5")).definitionHash)
        #expect(workerError("ready = \"soon\"").first?.contains("'ready'") == true)
        #expect(workerError("watchdog = -1") == ["\(mainPath):3: [worker.w] 'watchdog' must not be negative"])
        #expect(workerError("start-timeout = \"90\"").first?.contains("must be a number of seconds") == true)
        #expect(try worker("watchdog = 1e300").watchdog == 1e300, "clamped where it is used (clampedMicroseconds)")
        #expect(clampedMicroseconds(1e300) == .max && clampedMicroseconds(-1) == 0 && clampedMicroseconds(.nan) == 0)
        #expect(clampedMicroseconds(2.5) == 2_500_000)
    }

    @Test func mistypedRunDuringMaintenanceGetsTheKey() {
        #expect(workerError("run-during-maintainance = true") == [
            "\(mainPath):3: [worker.w] unknown key 'run-during-maintainance' (did you mean 'run-during-maintenance'?)"
        ])
        #expect(workerError("run_during_maintenance = true") == [
            "\(mainPath):3: [worker.w] unknown key 'run_during_maintenance' (did you mean 'run-during-maintenance'?)"
        ])
    }

    @Test func contractExample() throws {
        let configuration = try load(
            """
            [daemon]
            log-level = "debug"
            runner = "process"
            state-directory = "/var/lib/bgworker"   # persisted enable/disable
            admin-group = "bgworker-admin"
            workers-directory = "/etc/bgworker/more.d"

            [ha]
            source = "keepalived"
            instance = "/org/keepalived/Vrrp1/Instance/eth0/51/IPv4"
            on-lost = "keep"

            [worker.dice]
            exec = ["/usr/libexec/bgworker/bgworker-example", "--die-one-in", "10"]
            enabled = false
            run-on = "any"
            restart-delay = 2
            restart-delay-max = 30.5
            stable-after = 0
            start-limit-burst = 0
            start-limit-interval = 1.5
            stop-timeout = 0.25
            environment = { EXAMPLE = "1" }
            working-directory = "/srv"
            user = "nobody"
            group = "nogroup"
            """
        ).get()
        #expect(configuration.daemon.logLevel == .debug)
        #expect(configuration.daemon.runner == .process)
        #expect(configuration.daemon.adminGroup == "bgworker-admin")
        #expect(configuration.daemon.workersDirectory == "/etc/bgworker/more.d")
        #expect(configuration.ha.source == .keepalived(instance: "/org/keepalived/Vrrp1/Instance/eth0/51/IPv4"))
        #expect(configuration.ha.onLost == .keep)
        var expected = WorkerDefinition(name: "dice", exec: ["/usr/libexec/bgworker/bgworker-example", "--die-one-in", "10"])
        expected.enabled = false
        expected.runOn = .any
        expected.restartDelay = 2
        expected.restartDelayMax = 30.5
        expected.stableAfter = 0
        expected.startLimitBurst = 0
        expected.startLimitInterval = 1.5
        expected.stopTimeout = 0.25
        expected.environment = ["EXAMPLE": "1"]
        expected.workingDirectory = "/srv"
        expected.user = "nobody"
        expected.group = "nogroup"
        #expect(configuration.workers == [expected])
        #expect(configuration.origins["dice"]?.line == 13)
        #expect(configuration.origins["dice"]?.keyLines["stop-timeout"] == 22)
    }

    @Test func haSources() throws {
        #expect(try load("[ha]\nsource = \"dbus\"").get().ha.source == .dbus(service: "org.example.HAManager"))
        #expect(try load("[ha]\nsource = \"dbus\"\nservice = \"com.acme.HA\"").get().ha.source == .dbus(service: "com.acme.HA"))
        #expect(try load("[ha]\nsource = \"none\"\non-lost = \"keep\"").get().ha == HASettings(source: .none, onLost: .keep))
        #expect(try load("[ha]\nsource = \"dbus\"\non-lost = \"keep\"\nkeep-for = 2.5").get().ha.keepFor == 2.5)
        #expect(try load("[ha]\nkeep-for = 30").get().ha.keepFor == 30)
        #expect(try load("[ha]\nsource = \"dbus\"").get().ha.keepFor == 0)
        let pacemaker = try load("[ha]\nsource = \"pacemaker\"").get().ha
        #expect(pacemaker.source == .pacemaker && pacemaker.lease == 30 && pacemaker.leaseInForce == 30)
        #expect(try load("[ha]\nsource = \"pacemaker\"\nlease = 2.5").get().ha.leaseInForce == 2.5)
        // Other sources report changes, not renewals: no lease.
        #expect(try load("[ha]\nsource = \"dbus\"").get().ha.leaseInForce == nil)
    }

    @Test func resourceKeys() throws {
        let definition = try worker(
            """
            memory-max = "512M"
            cpu-quota = "150%"
            tasks-max = 64
            private-tmp = true
            protect-system = "strict"
            protect-home = "read-only"
            no-new-privileges = true
            """)
        #expect(definition.resources.memoryMax == 512 * 1024 * 1024)
        #expect(definition.resources.cpuQuotaPercent == 150)
        #expect(definition.resources.tasksMax == 64)
        #expect(definition.resources.privateTmp == true)
        #expect(definition.resources.protectSystem == .strict)
        #expect(definition.resources.protectHome == .readOnly)
        #expect(definition.resources.noNewPrivileges == true)

        #expect(try worker("memory-max = 1000").resources.memoryMax == 1000)
        #expect(try worker("memory-max = \"2K\"").resources.memoryMax == 2048)
        #expect(try worker("memory-max = \"3g\"").resources.memoryMax == 3 << 30)
        #expect(try worker("memory-max = \"1T\"").resources.memoryMax == 1 << 40)
        #expect(try worker("cpu-quota = 50").resources.cpuQuotaPercent == 50)
        #expect(try worker("cpu-quota = 12.5").resources.cpuQuotaPercent == 12.5)
        #expect(try worker("protect-system = true").resources.protectSystem == .on)
        #expect(try worker("protect-system = false").resources.protectSystem == .off)
        #expect(try worker("protect-system = \"full\"").resources.protectSystem == .full)
        #expect(try worker("protect-home = \"tmpfs\"").resources.protectHome == .tmpfs)
        #expect(try worker("protect-home = \"true\"").resources.protectHome == .on)
    }

    @Test func workerNames() throws {
        for name in ["a", "db-sync", "x.y", "user@host", "A_9", String(repeating: "n", count: 64)] {
            let text = "[worker.\"\(name)\"]\nexec = [\"/bin/true\"]\n"
            #expect(try load(text).get().worker(named: name) != nil, "\(name)")
        }
        #expect(errors("[worker.\"\"]\nexec = [\"/bin/true\"]") == [
            "\(mainPath):1: [worker.] invalid worker name '': use 1 to 64 of A-Z a-z 0-9 _ . @ -"
        ])
        #expect(errors("[worker.\"a b\"]\nexec = [\"/bin/true\"]") == [
            "\(mainPath):1: [worker.a b] invalid worker name 'a b': use 1 to 64 of A-Z a-z 0-9 _ . @ -"
        ])
        #expect(!errors("[worker.\"\(String(repeating: "n", count: 65))\"]\nexec = [\"/bin/true\"]").isEmpty)
        #expect(!errors("[worker.\"é\"]\nexec = [\"/bin/true\"]").isEmpty)
    }
}

@Suite struct ConfigurationErrorTests {
    @Test func unknownKeysEverywhereAllReported() {
        let text = """
            bogus = 1
            [daemon]
            log-levle = "info"
            [ha]
            sauce = "none"
            [worker.dice]
            exec = ["/bin/true"]
            exec-start = "/bin/true"
            """
        #expect(errors(text) == [
            "\(mainPath):1: unknown key 'bogus'",
            "\(mainPath):3: [daemon] unknown key 'log-levle' (did you mean 'log-level'?)",
            "\(mainPath):5: [ha] unknown key 'sauce' (did you mean 'source'?)",
            "\(mainPath):8: [worker.dice] unknown key 'exec-start'",
        ])
        guard case .failure(let failure) = load(text) else { return }
        #expect(failure.errors[3] == ConfigError(file: mainPath, line: 8, table: "worker.dice", key: "exec-start", message: "unknown key 'exec-start'"))
    }

    @Test func syntaxErrorNamesFileAndLine() {
        #expect(errors("[daemon]\nlog-level = info\n") == [
            "\(mainPath):2: invalid value 'info' (strings must be quoted)"
        ])
    }

    @Test(arguments: [
        ("exec = []", "'exec' must not be empty"),
        ("exec = \"/bin/true\"", "'exec' must be an array of strings (the argv), not a string"),
        ("exec = [\"true\"]", "'exec[0]' must be an absolute path, not \"true\""),
        ("exec = [\"/bin/true\", 1]", "'exec' must contain only strings, not an integer"),
        ("exec = [\"/bin/\\u0000x\"]", "'exec' must not contain a NUL character"),
        ("enabled = \"yes\"", "'enabled' must be true or false, not a string"),
        ("run-on = \"master\"", "'run-on' must be one of \"primary\", \"secondary\", \"any\", not \"master\""),
        ("log-level = \"loud\"", "'log-level' must be one of \"trace\", \"debug\", \"info\", \"notice\", \"warning\", \"error\", \"critical\", not \"loud\""),
        ("restart-delay = -1", "'restart-delay' must not be negative"),
        ("restart-delay = \"1s\"", "'restart-delay' must be a number of seconds, not a string"),
        ("restart-delay = inf", "'restart-delay' must be a finite number of seconds"),
        ("restart-delay = nan", "'restart-delay' must be a finite number of seconds"),
        ("stable-after = -0.5", "'stable-after' must not be negative"),
        ("stop-timeout = true", "'stop-timeout' must be a number of seconds, not a boolean"),
        ("restart-delay = 10\nrestart-delay-max = 5", "'restart-delay-max' (5.0) must not be less than 'restart-delay' (10.0)"),
        ("start-limit-burst = -1", "'start-limit-burst' must not be negative"),
        ("start-limit-burst = 1.5", "'start-limit-burst' must be an integer, not a float"),
        ("start-limit-interval = 0", "'start-limit-interval' must be greater than 0"),
        ("environment = [\"A=1\"]", "'environment' must be a table of strings, not an array"),
        ("environment = { A = 1 }", "environment variable 'A' must be a string, not an integer"),
        ("environment = { \"A=B\" = \"1\" }", "invalid environment variable 'A=B'"),
        ("environment = { BGWORKER_NAME = \"x\" }", "environment variable 'BGWORKER_NAME' is set by bgworkerd"),
        ("environment = { BGWORKER_OBJECT_PATH = \"/x\" }", "environment variable 'BGWORKER_OBJECT_PATH' is set by bgworkerd"),
        ("working-directory = \"srv\"", "'working-directory' must be an absolute path, not \"srv\""),
        ("user = \"\"", "'user' must not be empty"),
        ("group = 0", "'group' must be a string, not an integer"),
        ("memory-max = \"12X\"", "'memory-max' must be bytes, e.g. 536870912 or \"512M\" (suffixes K, M, G, T), not \"12X\""),
        ("memory-max = 0", "'memory-max' must be greater than 0"),
        ("memory-max = \"99999999999T\"", "'memory-max' must be bytes, e.g. 536870912 or \"512M\" (suffixes K, M, G, T), not \"99999999999T\""),
        ("memory-max = 1.5", "'memory-max' must be an integer or a string like \"512M\", not a float"),
        ("cpu-quota = \"50\"", "'cpu-quota' must be a percentage greater than 0, e.g. \"50%\" or 50.0"),
        ("cpu-quota = 0", "'cpu-quota' must be a percentage greater than 0, e.g. \"50%\" or 50.0"),
        ("tasks-max = 0", "'tasks-max' must be at least 1"),
        ("private-tmp = 1", "'private-tmp' must be true or false, not an integer"),
        ("protect-system = \"yes\"", "'protect-system' must be true, false, \"full\" or \"strict\""),
        ("protect-home = \"strict\"", "'protect-home' must be true, false, \"read-only\" or \"tmpfs\""),
        ("no-new-privileges = \"true\"", "'no-new-privileges' must be true or false, not a string"),
        ("run-during-maintenance = \"yes\"", "'run-during-maintenance' must be true or false, not a string"),
        ("run-during-maintenance = 1", "'run-during-maintenance' must be true or false, not an integer"),
    ] as [(String, String)])
    func workerKeyErrors(body: String, message: String) {
        let line = body.contains("\n") ? 4 : 3
        let text = body.hasPrefix("exec") ? "[worker.w]\nx = 0\n" + body : nil
        let found = text.map { errors($0) } ?? workerError(body)
        let expected = "\(mainPath):\(line): [worker.w] \(message)"
        if body.hasPrefix("exec") {
            #expect(found == ["\(mainPath):2: [worker.w] unknown key 'x'", expected], "\(body)")
        } else {
            #expect(found == [expected], "\(body)")
        }
    }

    @Test func unquotedDottedWorkerNameGetsAHint() {
        #expect(errors("[worker.a.b]\nexec = [\"/bin/true\"]") == [
            "\(mainPath):1: [worker.a] unknown key 'b' (quote a worker name that contains dots: [worker.\"a.b\"])",
            "\(mainPath):1: [worker.a] missing required key 'exec'",
        ])
    }

    @Test func missingExec() {
        #expect(errors("\n[worker.w]\nenabled = true") == ["\(mainPath):2: [worker.w] missing required key 'exec'"])
    }

    @Test(arguments: [
        ("[daemon]\nlog-level = \"loud\"", "\(mainPath):2: [daemon] 'log-level' must be one of \"trace\", \"debug\", \"info\", \"notice\", \"warning\", \"error\", \"critical\", not \"loud\""),
        ("[daemon]\nrunner = \"docker\"", "\(mainPath):2: [daemon] 'runner' must be one of \"auto\", \"process\", \"systemd\", not \"docker\""),
        ("[daemon]\nstate-directory = \"var\"", "\(mainPath):2: [daemon] 'state-directory' must be an absolute path, not \"var\""),
        ("[daemon]\nadmin-group = \"\"", "\(mainPath):2: [daemon] 'admin-group' must not be empty"),
        ("[daemon]\nworkers-directory = 1", "\(mainPath):2: [daemon] 'workers-directory' must be a string, not an integer"),
        ("[ha]\nsource = \"corosync\"", "\(mainPath):2: [ha] 'source' must be one of \"none\", \"keepalived\", \"dbus\", \"pacemaker\", not \"corosync\""),
        ("[ha]\nsource = \"dbus\"\nlease = 10", "\(mainPath):3: [ha] 'lease' applies only to source = \"pacemaker\""),
        ("[ha]\nsource = \"pacemaker\"\nlease = 0", "\(mainPath):3: [ha] 'lease' must be more than 0 seconds"),
        ("[ha]\nsource = \"pacemaker\"\nlease = -1", "\(mainPath):3: [ha] 'lease' must not be negative"),
        ("[ha]\nsource = \"pacemaker\"\nlease = \"30s\"", "\(mainPath):3: [ha] 'lease' must be a number of seconds, not a string"),
        ("[ha]\nsource = \"keepalived\"", "\(mainPath):2: [ha] source \"keepalived\" needs 'instance' (the VRRP instance's object path)"),
        ("[ha]\nsource = \"keepalived\"\ninstance = \"not/a/path\"", "\(mainPath):3: [ha] 'instance' must be a D-Bus object path, not \"not/a/path\""),
        ("[ha]\nsource = \"dbus\"\nservice = \"nodots\"", "\(mainPath):3: [ha] 'service' must be a well-known D-Bus name, not \"nodots\""),
        ("[ha]\ninstance = \"/a\"", "\(mainPath):2: [ha] 'instance' applies only to source = \"keepalived\""),
        ("[ha]\nsource = \"keepalived\"\ninstance = \"/a\"\nservice = \"a.b\"", "\(mainPath):4: [ha] 'service' applies only to source = \"dbus\""),
        ("[ha]\non-lost = \"panic\"", "\(mainPath):2: [ha] 'on-lost' must be one of \"stop\", \"keep\", not \"panic\""),
        ("[ha]\nkeep-for = -1", "\(mainPath):2: [ha] 'keep-for' must not be negative"),
        ("[ha]\nkeep-for = \"2s\"", "\(mainPath):2: [ha] 'keep-for' must be a number of seconds, not a string"),
        ("[ha]\nkeep-for = inf", "\(mainPath):2: [ha] 'keep-for' must be a finite number of seconds"),
        ("daemon = 1", "\(mainPath):1: 'daemon' must be a table [daemon], not an integer"),
        ("worker = 1", "\(mainPath):1: 'worker' must be a table of workers [worker.NAME], not an integer"),
        ("[worker]\nw = 1", "\(mainPath):2: [worker] 'w' must be a worker table [worker.w], not an integer"),
    ] as [(String, String)])
    func sectionErrors(text: String, message: String) {
        #expect(errors(text) == [message])
    }

    @Test func manyErrorsInOneWorkerAllReported() {
        let found = errors(
            """
            [worker.w]
            exec = ["relative"]
            restart-delay = -1
            run-on = "both"
            nope = 1
            """)
        #expect(found.count == 4)
        #expect(found.map { $0.split(separator: ":")[1] } == ["2", "3", "4", "5"])
    }

    @Test func duplicateWorkerAcrossFilesNamesBothPlaces() {
        let dropIns = [
            SourceFile(path: "/etc/bgworker/workers.d/10-a.toml", text: "\n[worker.dice]\nexec = [\"/bin/true\"]\n"),
            SourceFile(path: "/etc/bgworker/workers.d/20-b.toml", text: "[worker.other]\nexec = [\"/bin/true\"]\n\n[worker.dice]\nexec = [\"/bin/false\"]\n"),
        ]
        #expect(errors("[worker.dice]\nexec = [\"/bin/true\"]\n", dropIns: dropIns) == [
            "/etc/bgworker/workers.d/10-a.toml:2: [worker.dice] worker 'dice' is already defined at \(mainPath):1",
            "/etc/bgworker/workers.d/20-b.toml:4: [worker.dice] worker 'dice' is already defined at \(mainPath):1",
        ])
        #expect(errors("[worker.dice]\nexec = [\"/bin/true\"]\n[worker.dice]\n") == [
            "\(mainPath):3: table [worker.dice] is already defined (line 1)"
        ])
    }

    @Test func dropInsAddWorkersAndMayNotConfigureTheDaemon() throws {
        let dropIns = [
            SourceFile(path: "/d/a.toml", text: "[worker.a]\nexec = [\"/bin/true\"]\n"),
            SourceFile(path: "/d/b.toml", text: "[worker.b]\nexec = [\"/bin/true\"]\n"),
        ]
        let configuration = try load("[worker.c]\nexec = [\"/bin/true\"]\n", dropIns: dropIns).get()
        #expect(configuration.workers.map(\.name) == ["a", "b", "c"])
        #expect(configuration.origins["a"]?.file == "/d/a.toml")

        let bad = [SourceFile(path: "/d/x.toml", text: "[daemon]\nrunner = \"process\"\n[worker.x]\nexec = 1\n")]
        #expect(errors("", dropIns: bad) == [
            "/d/x.toml:1: [daemon] only [worker.NAME] tables are allowed in a drop-in file",
            "/d/x.toml:4: [worker.x] 'exec' must be an array of strings (the argv), not an integer",
        ])
        let broken = [SourceFile(path: "/d/y.toml", text: "[worker.y\n")]
        #expect(errors("[daemon]\nrunner = 3\n", dropIns: broken) == [
            "\(mainPath):2: [daemon] 'runner' must be a string, not an integer",
            "/d/y.toml:1: expected ']' to close the table header",
        ])
    }

    @Test func processRunnerRefusesResourceKeys() throws {
        let configuration = try load(
            """
            [worker.a]
            exec = ["/bin/true"]
            memory-max = "1G"
            protect-home = false

            [worker.b]
            exec = ["/bin/true"]
            """
        ).get()
        #expect(configuration.validate(for: .process).map(\.description) == [
            "\(mainPath):3: [worker.a] 'memory-max' needs the systemd runner; the process runner cannot apply it",
            "\(mainPath):4: [worker.a] 'protect-home' needs the systemd runner; the process runner cannot apply it",
        ])
        #expect(configuration.validate(for: .process).first?.key == "memory-max")
        #expect(configuration.validate(for: .systemd).isEmpty)
        #expect(configuration.validate(for: .auto).isEmpty)
    }

    @Test func systemdRunnerChecksUnitNameLength() throws {
        let name = String(repeating: "@", count: 64)
        let configuration = try load("[worker.\"\(name)\"]\nexec = [\"/bin/true\"]\n").get()
        #expect(configuration.validate(for: .systemd).count == 1)
        #expect(configuration.validate(for: .process).isEmpty)
    }
}

@Suite struct WorkersDirectoryOfABrokenMainFileTests {
    /// The daemon checks the drop-ins even when the main file has errors (issue 8): it needs the
    /// folder the main file names, when that can be known.
    @Test func theFolderIsKnownWhenItCanBe() {
        func folder(_ text: String) -> String? { Configuration.workersDirectory(writtenIn: SourceFile(path: "/m.toml", text: text)) }
        #expect(folder("[daemon]\nworkers-directory = \"/d\"\nbad-key = 1\n") == "/d")
        #expect(folder("[worker.x]\nexec = 1\n") == "workers.d")
        #expect(folder("[worker.x\n") == "workers.d")
        #expect(folder("[daemon]\nworkers-directory = \"/d\"\n[worker.x\n") == nil)
        #expect(folder("[daemon]\nworkers-directory = 1\n") == nil)
        #expect(folder("daemon = 1\n") == nil)
    }
}
