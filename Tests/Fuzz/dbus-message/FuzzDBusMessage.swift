// libFuzzer target: D-Bus message bodies of any signature. The input is a signature and a body
// (see `message(fromFuzzInput:)`), which get a valid signal header, so that mutated bytes reach
// the body checks rather than dying in the header. libdbus checks the message as it checks what
// it reads from a socket (dbus_message_demarshal); what it accepts, our decoder must turn into
// `DBusValue`s without crashing, whatever the signature, and those values must describe the same
// signature, pass our own checks for sending, and survive a round trip (encode, decode)
// unchanged. libdbus refusing the bytes is not a finding.
//
// Built by scripts/fuzz with `-sanitize=fuzzer,address -DBGW_LIBFUZZER`, where libFuzzer owns
// `main`. Without BGW_LIBFUZZER (the normal build) it replays the files named on the command line
// through the same function, or writes the seed corpus: `--write-seeds DIR`.
@_spi(WireFormat) import DBus

func fuzzMessage(_ input: UnsafeRawBufferPointer) {
    let bytes = message(fromFuzzInput: input)
    bytes.withUnsafeBytes(checkMessage)
}

func checkMessage(_ bytes: UnsafeRawBufferPointer) {
    guard let decoded = WireFormat.decodeBody(bytes), case .success(let values) = decoded else { return }
    let signature = WireFormat.bodySignature(bytes) ?? ""
    guard let ours = try? Signature(values.map(\.type)), ours.rawValue == signature else {
        fatalError("decoded types \(values.map(\.type)) do not match the body signature '\(signature)'")
    }
    let encoded: [UInt8]
    do {
        encoded = try WireFormat.encodeSignal(path: "/fuzz", interface: "org.example.Fuzz", member: "Echo", values)
    } catch {
        fatalError("received values do not pass our checks for sending: \(error)")
    }
    // Descriptions, not ==: a NaN is unequal to itself, but prints the same after a bitwise copy.
    let again = encoded.withUnsafeBytes(WireFormat.decodeBody)
    guard case .success(let valuesAgain)? = again, "\(valuesAgain)" == "\(values)" else {
        fatalError("round trip changed the values: \(values) -> \(String(describing: again))")
    }
}

/// The fuzz input is: one byte n, n bytes of signature (n is cut to what is there), the body.
/// The result is a little-endian signal message (serial 1, path /f, interface f.F, member M)
/// with that signature and body, in wire format.
func message(fromFuzzInput input: UnsafeRawBufferPointer) -> [UInt8] {
    let n = min(Int(input.first ?? 0), max(input.count - 1, 0))
    let signature = Array(input.dropFirst().prefix(n))
    let body = Array(input.dropFirst(1 + n))
    var fields: [UInt8] = []
    func pad(_ a: inout [UInt8], to alignment: Int) { while a.count % alignment != 0 { a.append(0) } }
    func uint32(_ a: inout [UInt8], _ v: Int) { for i in 0..<4 { a.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    // A header field: struct (byte code, variant): 8-aligned, offsets in `fields` are offsets in
    // the message minus 16, which keeps every alignment.
    func field(_ code: UInt8, _ type: Character, _ value: [UInt8]) {
        pad(&fields, to: 8)
        fields += [code, 1, UInt8(ascii: type.unicodeScalars.first!), 0]
        if type == "g" {
            fields.append(UInt8(value.count))
        } else {
            uint32(&fields, value.count)
        }
        fields += value + [0]
    }
    field(1, "o", Array("/f".utf8))
    field(2, "s", Array("f.F".utf8))
    field(3, "s", Array("M".utf8))
    if !signature.isEmpty { field(8, "g", signature) }
    var bytes: [UInt8] = [UInt8(ascii: "l"), 4, 0, 1]
    uint32(&bytes, body.count)
    uint32(&bytes, 1)
    uint32(&bytes, fields.count)
    bytes += fields
    pad(&bytes, to: 8)
    return bytes + body
}

#if BGW_LIBFUZZER
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzMessage(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
import Foundation
import FuzzSupport

@main
enum Replay {
    static func main() throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "--write-seeds", arguments.count == 2 {
            try writeSeeds(to: arguments[1])
        } else {
            replayFiles(arguments, through: fuzzMessage)
        }
    }

    /// Small messages with the shapes bgworker sends and receives: the daemon's own signatures,
    /// properties, nested containers, fixed arrays long enough for the one-copy path.
    static func writeSeeds(to folder: String) throws {
        let path = try ObjectPath("/org/example/BgWorker/worker/web")
        let seeds: [String: [DBusValue]] = [
            "empty": [],
            "basic-numbers": [.byte(7), .bool(true), .int16(-2), .uint16(2), .int32(-3), .uint32(3),
                              .int64(-4), .uint64(4), .double(1.5)],
            "strings": [.string("web"), .objectPath(path), .signature(try Signature("a{sv}"))],
            "properties-changed": [
                .string("org.example.BgWorker.Worker"),
                .dictionary(key: .string, value: .variant, [
                    DBusDictEntry(.string("State"), .variant(.string("running"))),
                    DBusDictEntry(.string("MainPID"), .variant(.uint32(4242))),
                    DBusDictEntry(.string("Enabled"), .variant(.bool(true))),
                ]),
                .array(.string, [.string("Restarts")]),
            ],
            "worker-list": [.array(.structure([.string, .string, .objectPath, .uint32]), [
                .structure([.string("web"), .string("running"), .objectPath(path), .uint32(4242)]),
                .structure([.string("mail"), .string("stopped"), .objectPath(try ObjectPath("/org/example/BgWorker/worker/mail")), .uint32(0)]),
            ])],
            "fixed-arrays": [.array(.byte, (0..<40).map { .byte(UInt8($0)) }),
                             .array(.int32, (0..<20).map { .int32(Int32($0) - 10) }),
                             .array(.double, (0..<17).map { .double(Double($0) / 3) })],
            "nested-variants": [.variant(.variant(.structure([.int64(1), .variant(.array(.int16, [.int16(1)]))])))],
            "empty-containers": [.array(.string, []), .dictionary(key: .uint32, value: .array(.byte), []),
                                 .array(.array(.variant), [.array(.variant, [])])],
        ]
        for (name, values) in seeds.sorted(by: { $0.key < $1.key }) {
            let bytes = try WireFormat.encodeSignal(path: "/org/example/BgWorker", interface: "org.example.BgWorker",
                                                    member: "Seed", values)
            // Back to the fuzz input's form: the signature and the body (its length is at 4).
            let bodyLength = bytes[4..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
            let signature = Array((try Signature(values.map(\.type))).rawValue.utf8)
            let input = [UInt8(signature.count)] + signature + bytes.suffix(bodyLength)
            let rebuilt = input.withUnsafeBytes(message(fromFuzzInput:))
            guard case .success(let decoded)? = rebuilt.withUnsafeBytes(WireFormat.decodeBody), "\(decoded)" == "\(values)" else {
                fatalError("seed \(name) does not survive the fuzz input's form")
            }
            let file = "\(folder)/\(name).bin"
            guard FileManager.default.createFile(atPath: file, contents: Data(input)) else { fatalError("cannot write \(file)") }
            print("\(file): \(input.count) bytes")
        }
    }
}
#endif
