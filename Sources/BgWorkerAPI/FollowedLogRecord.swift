// One record of a `FollowLogs` socket (an extension beyond the contract, docs/bgworkerctl.md):
// the daemon sends one per output line of the followed worker, the client reads them.

/// A worker's output line as `FollowLogs` delivers it.
public struct FollowedLogRecord: Equatable, Sendable {
    /// When the daemon read the line, µs since the epoch.
    public var time: UInt64
    /// Lines the daemon could not send just before this one (the reader fell behind).
    public var dropped: UInt32
    public var text: String

    public init(time: UInt64, dropped: UInt32, text: String) {
        self.time = time
        self.dropped = dropped
        self.text = text
    }

    /// Bytes: the time (u64), the dropped count (u32), both little-endian, then the text (UTF-8).
    public var encoded: [UInt8] {
        var record: [UInt8] = []
        record.reserveCapacity(Self.headerSize + text.utf8.count)
        withUnsafeBytes(of: time.littleEndian) { record += $0 }
        withUnsafeBytes(of: dropped.littleEndian) { record += $0 }
        record += text.utf8
        return record
    }

    /// A record as `encoded` made it, or nil when it is shorter than its header.
    public init?(decoding record: ArraySlice<UInt8>) {
        guard record.count >= Self.headerSize else { return nil }
        time = record.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        dropped = record.dropFirst(8).prefix(4).withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        text = String(decoding: record.dropFirst(Self.headerSize), as: UTF8.self)
    }

    public static let headerSize = 12
}
