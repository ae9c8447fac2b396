// What every subcommand produces: figures, each with the baseline it is compared with, printed
// as a table or as JSON.
import Foundation
import Glibc
import SystemSupport

/// A set of measurements of one quantity.
struct Samples: Sendable {
    private(set) var values: [Double] = []

    init(_ values: [Double] = []) { self.values = values }

    mutating func add(_ value: Double) { values.append(value) }
    /// A duration given as two CLOCK_MONOTONIC timestamps, stored in milliseconds.
    mutating func addInterval(from start: UInt64, to end: UInt64) {
        values.append(Double(Int64(bitPattern: end &- start)) / 1_000_000)
    }

    var count: Int { values.count }
    var isEmpty: Bool { values.isEmpty }
    var mean: Double { values.isEmpty ? .nan : values.reduce(0, +) / Double(values.count) }
    var max: Double { values.max() ?? .nan }
    var min: Double { values.min() ?? .nan }
    /// Nearest-rank percentile (p in 0...100).
    func percentile(_ p: Double) -> Double {
        guard !values.isEmpty else { return .nan }
        let sorted = values.sorted()
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
        return sorted[Swift.max(0, Swift.min(sorted.count - 1, rank - 1))]
    }
    var p50: Double { percentile(50) }
    var p99: Double { percentile(99) }
}

/// Whether a larger value is worse (latencies, memory) or better (throughput). The ratio is
/// always "how many times worse than the baseline": measured/baseline for the first,
/// baseline/measured for the second, so that 1.0 is "as good as the floor" everywhere.
enum Direction: String, Codable, Sendable {
    case lowerIsBetter
    case higherIsBetter
}

/// One line of a table.
struct Figure: Encodable, Sendable {
    var name: String
    var unit: String
    var p50: Double
    var p99: Double?
    var mean: Double?
    /// "max" instead of p99 for small n (the keepalived failovers).
    var max: Double?
    var n: Int
    var direction: Direction = .lowerIsBetter
    /// The baseline's name and its p50 (or single value), measured in the same run.
    var baselineName: String?
    var baseline: Double?
    /// The aim from the issue, as text (e.g. "<= 1.5x", "< 5 ms").
    var aim: String?
    var note: String?

    /// Measured against baseline, as documented on `Direction`.
    var ratio: Double? {
        guard let baseline, baseline.isFinite, baseline != 0, p50.isFinite, p50 != 0 else { return nil }
        return direction == .lowerIsBetter ? p50 / baseline : baseline / p50
    }

    /// A figure from samples (p50, p99, mean, n).
    init(_ name: String, unit: String = "ms", _ samples: Samples, direction: Direction = .lowerIsBetter,
         baseline: (String, Double)? = nil, aim: String? = nil, note: String? = nil, showMax: Bool = false) {
        self.name = name
        self.unit = unit
        p50 = samples.p50
        if showMax { max = samples.max } else { p99 = samples.p99 }
        // With a handful of samples, every one is worth seeing.
        if samples.count <= 10, note == nil {
            self.note = "samples: " + samples.values.map { String(format: "%.3f", $0) }.joined(separator: ", ")
        }
        mean = samples.mean
        n = samples.count
        self.direction = direction
        baselineName = baseline?.0
        self.baseline = baseline?.1
        self.aim = aim
        if self.note == nil { self.note = note }
    }

    /// A single value (a memory size, a count over a window, a one-off time).
    init(_ name: String, unit: String, value: Double, direction: Direction = .lowerIsBetter,
         baseline: (String, Double)? = nil, aim: String? = nil, note: String? = nil) {
        self.name = name
        self.unit = unit
        p50 = value
        n = 1
        self.direction = direction
        baselineName = baseline?.0
        self.baseline = baseline?.1
        self.aim = aim
        self.note = note
    }

    enum CodingKeys: String, CodingKey {
        case name, unit, p50, p99, mean, max, n, direction, baselineName = "baseline_name", baseline, ratio, aim, note
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(unit, forKey: .unit)
        try c.encode(Self.finite(p50), forKey: .p50)
        try c.encodeIfPresent(p99.flatMap(Self.finite), forKey: .p99)
        try c.encodeIfPresent(mean.flatMap(Self.finite), forKey: .mean)
        try c.encodeIfPresent(max.flatMap(Self.finite), forKey: .max)
        try c.encode(n, forKey: .n)
        try c.encode(direction, forKey: .direction)
        try c.encodeIfPresent(baselineName, forKey: .baselineName)
        try c.encodeIfPresent(baseline.flatMap(Self.finite), forKey: .baseline)
        try c.encodeIfPresent(ratio.flatMap(Self.finite), forKey: .ratio)
        try c.encodeIfPresent(aim, forKey: .aim)
        try c.encodeIfPresent(note, forKey: .note)
    }

    private static func finite(_ v: Double) -> Double? { v.isFinite ? v : nil }
}

/// The result of one subcommand: its figures, notes on method, or why it was skipped.
struct Section: Encodable, Sendable {
    var title: String
    var figures: [Figure] = []
    var notes: [String] = []
    /// Set when the section could not run here ("needs root").
    var skipped: String?

    init(_ title: String) { self.title = title }
}

/// Where the run happened: the machine and its load, for the reader of the figures.
struct RunContext: Codable, Sendable {
    var date: String
    var cpus: Int
    var loadBefore: String
    var loadAfter: String?
    var kernel: String

    static func now() -> RunContext {
        var info = utsname()
        uname(&info)
        let release = withUnsafeBytes(of: &info.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return RunContext(date: ISO8601DateFormatter().string(from: Date()), cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))),
                          loadBefore: loadAverage(), loadAfter: nil, kernel: release)
    }

    static func loadAverage() -> String {
        let text = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
        return text.split(separator: " ").prefix(3).joined(separator: " ")
    }
}

struct Report: Encodable, Sendable {
    var context: RunContext
    var sections: [Section]
}

enum Output {
    static func format(_ v: Double?, unit: String) -> String {
        guard let v, v.isFinite else { return "-" }
        switch unit {
        case "ms": return v >= 100 ? String(format: "%.1f", v) : String(format: "%.3f", v)
        case "calls/s", "KiB", "count": return String(format: "%.0f", v)
        default: return String(format: "%.3g", v)
        }
    }

    /// A readable table: one line per figure, then the notes.
    static func table(_ section: Section) -> String {
        var lines = ["== \(section.title) =="]
        if let skipped = section.skipped {
            lines.append("skipped: \(skipped)")
            return lines.joined(separator: "\n") + "\n"
        }
        let header = ["figure", "unit", "p50", "p99/max", "mean", "n", "baseline (p50)", "ratio", "aim"]
        var rows: [[String]] = [header]
        for f in section.figures {
            let tail = f.max != nil ? "max " + format(f.max, unit: f.unit) : format(f.p99, unit: f.unit)
            let baseline = f.baselineName.map { "\($0): \(format(f.baseline, unit: f.unit))" } ?? "-"
            rows.append([f.name, f.unit, format(f.p50, unit: f.unit), tail, format(f.mean, unit: f.unit), "\(f.n)",
                         baseline, f.ratio.map { String(format: "%.2fx", $0) } ?? "-", f.aim ?? "-"])
        }
        let widths = header.indices.map { i in rows.map { $0[i].count }.max() ?? 0 }
        for (index, row) in rows.enumerated() {
            let cells = row.enumerated().map { i, cell in
                i == 0 || i == 6 ? cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[i] - cell.count) + cell
            }
            lines.append(cells.joined(separator: "  "))
            if index == 0 { lines.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
        }
        for f in section.figures where f.note != nil { lines.append("  [\(f.name)] \(f.note ?? "")") }
        for note in section.notes { lines.append("  * \(note)") }
        return lines.joined(separator: "\n") + "\n"
    }

    static func json(_ report: Report) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (try? encoder.encode(report)).map { String(decoding: $0, as: UTF8.self) + "\n" } ?? "{}\n"
    }

    static func print(_ report: Report, json: Bool) {
        if json {
            Swift.print(Self.json(report), terminator: "")
            return
        }
        Swift.print("bgworker-bench  \(report.context.date)  \(report.context.cpus) cpus  kernel \(report.context.kernel)  "
                    + "load before \(report.context.loadBefore), after \(report.context.loadAfter ?? "-")\n")
        for section in report.sections { Swift.print(table(section)) }
    }
}

/// Progress on stderr, so that stdout stays a clean table or JSON document.
func progress(_ text: String) {
    FileHandle.standardError.write(Data("bench: \(text)\n".utf8))
}
