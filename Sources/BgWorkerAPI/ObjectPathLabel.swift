// The worker object path escaping of the contract, and the hex helpers BgWorkerCore's unit-name
// escaping shares (package access: not part of the contract).

/// The object-path label of a worker name, as systemd escapes unit names in object paths: every
/// byte outside `[A-Za-z0-9]`, and a digit in first position, becomes `_` plus two lowercase hex
/// digits (`db-sync` is `db_2dsync`). The empty string is `_`, as in systemd.
public func objectPathLabel(forWorker name: String) -> String {
    if name.isEmpty { return "_" }
    var out: [UInt8] = []
    for (position, byte) in name.utf8.enumerated() {
        let isDigit = byte >= 0x30 && byte <= 0x39
        if isASCIIAlphanumeric(byte) && !(position == 0 && isDigit) {
            out.append(byte)
        } else {
            out.append(UInt8(ascii: "_"))
            out.append(lowercaseHexDigits[Int(byte >> 4)])
            out.append(lowercaseHexDigits[Int(byte & 0xF)])
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// The inverse of `objectPathLabel(forWorker:)`; nil for a label that no name produces.
public func workerName(fromObjectPathLabel label: String) -> String? {
    if label == "_" { return "" }
    let bytes = Array(label.utf8)
    var out: [UInt8] = []
    var index = 0
    while index < bytes.count {
        let byte = bytes[index]
        if byte == UInt8(ascii: "_") {
            guard index + 2 < bytes.count, let high = lowercaseHexValue(bytes[index + 1]), let low = lowercaseHexValue(bytes[index + 2]) else {
                return nil
            }
            out.append(high << 4 | low)
            index += 3
        } else if isASCIIAlphanumeric(byte) {
            out.append(byte)
            index += 1
        } else {
            return nil
        }
    }
    // Reject non-canonical labels (escaped bytes that need no escaping), so the mapping is 1:1.
    guard let name = String(validating: out, as: UTF8.self),
        objectPathLabel(forWorker: name) == label
    else { return nil }
    return name
}

package let lowercaseHexDigits = Array("0123456789abcdef".utf8)

/// The value of one lowercase hex digit.
package func lowercaseHexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    default: nil
    }
}

private func isASCIIAlphanumeric(_ byte: UInt8) -> Bool {
    (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
}
