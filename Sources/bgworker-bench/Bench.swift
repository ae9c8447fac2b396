// bgworker-bench: every figure the issues ask for, each beside a baseline measured in the same
// run, as a ratio. See docs/benchmarks.md for the method of each.
import ArgumentParser
import BgWorkerCore
import ClientSupport
import Foundation
import Glibc

@main
struct BgWorkerBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bgworker-bench",
        abstract: "Benchmarks of bgworkerd and its D-Bus layer, each figure beside a floor measured in the same run.",
        discussion: """
            Runs the release bgworkerd, bgworker-example and bgworker-ha-sim found next to this \
            executable (build them with `swift build -c release`). Root-only parts (network \
            namespaces with keepalived, a systemd namespace) are skipped when not root.
            """,
        version: bgworkerVersion,
        subcommands: [DBusBench.self, DaemonBenchmark.self, HABenchmark.self, SystemdBenchmark.self, SystemdScaleBenchmark.self, ScaleBenchmark.self, StateFileBenchmark.self,
                      SoakBenchmark.self, PacemakerBenchmark.self, MaintenanceBenchmark.self, NotifyBenchmark.self, NotifyRelay.self,
                      AllBenchmarks.self])

    static func main() async {
        Interrupt.install()
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exitForError(error)
        }
    }
}

/// Options every subcommand has.
struct CommonOptions: ParsableArguments {
    @Flag(help: "Print JSON instead of a table.")
    var json = false

    @Option(name: .customLong("json-file"), help: "Also write the JSON report to this file (the same run's figures).")
    var jsonFile: String?

    /// Prints the sections with the run's context (machine, load before and after).
    func emit(_ sections: [Section], context: RunContext? = nil) async throws {
        var context = context ?? RunContext.now()
        context.loadAfter = RunContext.loadAverage()
        let report = Report(context: context, sections: sections)
        Output.print(report, json: json)
        if let jsonFile { try Output.json(report).write(toFile: jsonFile, atomically: true, encoding: .utf8) }
    }
}

struct AllBenchmarks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "all", abstract: "Every benchmark, one after the other.")

    @OptionGroup var common: CommonOptions

    func run() async throws {
        let context = RunContext.now()
        var sections: [Section] = []
        // One failing part does not hide the others' figures.
        func attempt(_ title: String, _ body: () async throws -> [Section]) async {
            do { sections += try await body() } catch {
                var failed = Section(title)
                failed.skipped = "failed: \(error)"
                sections.append(failed)
            }
        }
        await attempt("dbus") { [try await DBusRoundTrip.section()] }
        await attempt("daemon") { [try await DaemonBenchmark.measure(DaemonBenchmark.Settings())] }
        await attempt("ha") { try await HABenchmark.measure(HABenchmark.Settings()) }
        await attempt("systemd") { [try await SystemdBenchmark.measure(SystemdBenchmark.Settings())] }
        await attempt("pacemaker") { [try await PacemakerBenchmark.measure(moves: 10)] }
        await attempt("maintenance") { [try await MaintenanceBenchmark.measure()] }
        await attempt("notify") { [try await NotifyBenchmark.measure()] }
        await attempt("state-file") { [try await StateFileBenchmark.measure(runs: 5)] }
        try await common.emit(sections, context: context)
    }
}

/// Pacing between iterations (not synchronisation: every wait is for a real event), so that
/// each iteration measures one isolated event rather than a backlog of the previous one.
func pause(_ milliseconds: Int) async {
    try? await Task.sleep(for: .milliseconds(milliseconds))
}
