import BgWorkerCore
import Testing

/// Issue 12: log levels as people type them, in the config and over the bus.
@Suite struct LogLevelParsingTests {
    @Test(arguments: [("info", LogLevel.info), ("INFO", .info), ("Warning", .warning), ("warn", .warning), ("WARN", .warning),
                      ("Critical", .critical), ("trace", .trace)])
    func anyCaseAndWarn(text: String, level: LogLevel) {
        #expect(LogLevel(parsing: text) == level)
    }

    @Test(arguments: ["", "loud", "warnings", "err", " info"])
    func othersAreRefused(text: String) {
        #expect(LogLevel(parsing: text) == nil)
    }

    @Test func theConfigurationAcceptsThem() throws {
        let text = """
            [daemon]
            log-level = "DEBUG"

            [worker.w]
            exec = ["/bin/true"]
            log-level = "Warn"
            """
        let configuration = try Configuration.parse(main: SourceFile(path: "/x.toml", text: text)).get()
        #expect(configuration.daemon.logLevel == .debug)
        #expect(configuration.worker(named: "w")?.logLevel == .warning)
    }
}
