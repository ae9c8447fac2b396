// Names derived from worker names: systemd unit names, and the definition hash the systemd
// runner stores in a unit to recognise an unchanged worker. (The object-path labels of the bus
// contract are in BgWorkerAPI.)
import BgWorkerAPI

/// The prefix and suffix of every worker's transient unit.
public let systemdUnitPrefix = "bgworker-"
public let systemdUnitSuffix = ".service"

/// The systemd unit name of a worker: `bgworker-<name>.service`.
///
/// systemd accepts `[A-Za-z0-9:_.\-]` in unit names and treats `@` as the template/instance
/// separator, so `@` — and any byte outside that set, which valid worker names never contain — is
/// written `\xNN` as `systemd-escape` does (`a@b` is `bgworker-a\x40b.service`). `-` stays as it
/// is: it is valid in a unit name and the name is never unescaped as a path.
public func systemdUnitName(forWorker name: String) -> String {
    var out: [UInt8] = Array(systemdUnitPrefix.utf8)
    for byte in name.utf8 {
        if isAlphanumeric(byte) || byte == UInt8(ascii: ":") || byte == UInt8(ascii: "_")
            || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-")
        {
            out.append(byte)
        } else {
            out.append(contentsOf: Array("\\x".utf8))
            out.append(lowercaseHexDigits[Int(byte >> 4)])
            out.append(lowercaseHexDigits[Int(byte & 0xF)])
        }
    }
    out.append(contentsOf: Array(systemdUnitSuffix.utf8))
    return String(decoding: out, as: UTF8.self)
}

/// The worker name of one of our unit names, or nil when the unit is not one of ours.
public func workerName(fromSystemdUnitName unit: String) -> String? {
    guard unit.hasPrefix(systemdUnitPrefix), unit.hasSuffix(systemdUnitSuffix) else { return nil }
    let escaped = Array(unit.utf8.dropFirst(systemdUnitPrefix.utf8.count).dropLast(systemdUnitSuffix.utf8.count))
    var out: [UInt8] = []
    var index = 0
    while index < escaped.count {
        if escaped[index] == UInt8(ascii: "\\") {
            guard index + 3 < escaped.count, escaped[index + 1] == UInt8(ascii: "x"),
                let high = lowercaseHexValue(escaped[index + 2]), let low = lowercaseHexValue(escaped[index + 3])
            else { return nil }
            out.append(high << 4 | low)
            index += 4
        } else {
            out.append(escaped[index])
            index += 1
        }
    }
    let name = String(decoding: out, as: UTF8.self)
    guard isValidWorkerName(name), systemdUnitName(forWorker: name) == unit else { return nil }
    return name
}

extension WorkerDefinition {
    /// The fields that shape the process itself: exec, environment, working directory, user,
    /// group, stop timeout, resource/sandbox settings and the readiness keys (and the name). A change in any of them
    /// restarts a running worker on reload; `enabled`, `run-on` and the restart policy apply
    /// without a restart.
    ///
    /// Encoded canonically (tagged, length-prefixed, environment sorted) so it can be compared
    /// and hashed.
    public var canonicalProcessEncoding: [UInt8] {
        var encoder = CanonicalEncoder()
        encoder.field("name", name)
        encoder.field("exec", exec)
        let sortedEnvironment = environment.sorted { $0.key < $1.key }
        encoder.field("environment", sortedEnvironment.flatMap { [$0.key, $0.value] })
        encoder.field("working-directory", workingDirectory)
        encoder.field("user", user)
        encoder.field("group", group)
        encoder.field("stop-timeout", String(stopTimeout.bitPattern, radix: 16))
        encoder.field("memory-max", resources.memoryMax.map { String($0) })
        encoder.field("cpu-quota", resources.cpuQuotaPercent.map { String($0.bitPattern, radix: 16) })
        encoder.field("tasks-max", resources.tasksMax.map { String($0) })
        encoder.field("private-tmp", resources.privateTmp.map { String($0) })
        encoder.field("protect-system", resources.protectSystem?.rawValue)
        encoder.field("protect-home", resources.protectHome?.rawValue)
        encoder.field("no-new-privileges", resources.noNewPrivileges.map { String($0) })
        // Only when set, so that the hash of a worker that does not use them (the systemd
        // runner's adoption key) stays what it was before these keys existed.
        if ready != .exec { encoder.field("ready", ready.rawValue) }
        if ready == .notify { encoder.field("start-timeout", String(startTimeout.bitPattern, radix: 16)) }
        if watchdog > 0 { encoder.field("watchdog", String(watchdog.bitPattern, radix: 16)) }
        return encoder.bytes
    }

    /// Whether a running process of `self` must be restarted to become `other`.
    public func processDiffers(from other: WorkerDefinition) -> Bool {
        // Equal definitions encode alike: a Reload that changes nothing encodes nothing (the
        // two encodings were 40% of that Reload's CPU at 10,000 workers).
        self != other && canonicalProcessEncoding != other.canonicalProcessEncoding
    }

    /// A stable hash of the process-shaping definition: FNV-1a 64 over
    /// `canonicalProcessEncoding`. Stable across runs and builds (unlike `Hasher`), so the
    /// systemd runner can store it in a unit and compare it later.
    public var definitionHash: UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in canonicalProcessEncoding {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }

    /// `definitionHash` as 16 lowercase hex digits.
    public var definitionHashText: String {
        let digits = String(definitionHash, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

private struct CanonicalEncoder {
    var bytes: [UInt8] = []

    mutating func string(_ text: String) {
        let utf8 = Array(text.utf8)
        bytes.append(contentsOf: Array(String(utf8.count).utf8))
        bytes.append(UInt8(ascii: ":"))
        bytes.append(contentsOf: utf8)
    }

    mutating func field(_ tag: String, _ value: String?) {
        string(tag)
        if let value {
            bytes.append(UInt8(ascii: "="))
            string(value)
        } else {
            bytes.append(UInt8(ascii: "-"))
        }
    }

    mutating func field(_ tag: String, _ values: [String]) {
        string(tag)
        bytes.append(UInt8(ascii: "["))
        string(String(values.count))
        for value in values { string(value) }
    }
}
