import ArgumentParser

/// `bgworker-bench SUBCOMMAND`: measurements against real components. Each subcommand lives
/// in its own file.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bgworker-bench",
        abstract: "Benchmarks of bgworker's parts against real components.",
        subcommands: [DBusBench.self])
}
