// The persisted enable/disable choices made over the bus, and which wins against the file.

/// One worker's choice made over the bus, with the configured `enabled` value at that time.
public struct EnableIntent: Sendable, Equatable {
    public var enabled: Bool
    /// The worker's configured `enabled` when the choice was made. When the configuration's value
    /// later differs, the configuration is the newer intent and replaces this choice.
    public var configuredEnabled: Bool

    public init(enabled: Bool, configuredEnabled: Bool) {
        self.enabled = enabled
        self.configuredEnabled = configuredEnabled
    }
}

/// The content of the state file: the bus choices still in force, by worker name.
///
/// Text format (version 1), one line per worker, `#` comments and blank lines ignored:
///
///     bgworker-enable-state 1
///     disabled db-sync configured=true
///     enabled dice configured=false
public struct EnableState: Sendable, Equatable {
    public static let header = "bgworker-enable-state"
    public static let version = 1

    public var intents: [String: EnableIntent]

    public init(intents: [String: EnableIntent] = [:]) {
        self.intents = intents
    }

    /// The intent in force for a worker: its persisted choice while the configured value is still
    /// the one that choice was made against, else the configured value.
    public func effectiveEnabled(for definition: WorkerDefinition) -> Bool {
        guard let intent = intents[definition.name], intent.configuredEnabled == definition.enabled else {
            return definition.enabled
        }
        return intent.enabled
    }

    /// Keeps only choices that are still in force for this configuration: drops those of workers
    /// that are gone and those whose configured value changed since.
    public func pruned(for configuration: Configuration) -> EnableState {
        var kept: [String: EnableIntent] = [:]
        for definition in configuration.workers {
            if let intent = intents[definition.name], intent.configuredEnabled == definition.enabled {
                kept[definition.name] = intent
            }
        }
        return EnableState(intents: kept)
    }

    /// The file's text; lines sorted by name so that equal states give equal files.
    public func encoded() -> String {
        var text = "# bgworkerd: workers enabled or disabled over the bus; written by bgworkerd\n"
        text += "\(Self.header) \(Self.version)\n"
        for name in intents.keys.sorted() {
            guard let intent = intents[name] else { continue }
            text += "\(intent.enabled ? "enabled" : "disabled") \(name) configured=\(intent.configuredEnabled)\n"
        }
        return text
    }

    /// Reads the file's text. Tolerant: an empty or missing file (pass "") is an empty state; a
    /// corrupt one or one of another version is reported and also yields an empty state, so the
    /// configuration's values apply.
    public static func decode(_ text: String) -> (state: EnableState, problem: String?) {
        var intents: [String: EnableIntent] = [:]
        var sawHeader = false
        for (offset, line) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.isEmpty || fields[0].hasPrefix("#") { continue }
            let lineNumber = offset + 1
            if !sawHeader {
                guard fields.count == 2, fields[0] == Self.header else {
                    return (EnableState(), "line \(lineNumber): expected '\(Self.header) \(Self.version)'")
                }
                guard fields[1] == String(Self.version) else {
                    return (EnableState(), "line \(lineNumber): unsupported version '\(fields[1])'")
                }
                sawHeader = true
                continue
            }
            guard fields.count == 3, fields[0] == "enabled" || fields[0] == "disabled",
                isValidWorkerName(String(fields[1])),
                fields[2] == "configured=true" || fields[2] == "configured=false"
            else {
                return (EnableState(), "line \(lineNumber): malformed entry '\(line)'")
            }
            let name = String(fields[1])
            guard intents[name] == nil else {
                return (EnableState(), "line \(lineNumber): worker '\(name)' listed twice")
            }
            intents[name] = EnableIntent(enabled: fields[0] == "enabled", configuredEnabled: fields[2] == "configured=true")
        }
        if !sawHeader && !intents.isEmpty { return (EnableState(), "missing header") }
        return (EnableState(intents: intents), nil)
    }
}
