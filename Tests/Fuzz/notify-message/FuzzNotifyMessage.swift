// libFuzzer target: the bytes of one notify datagram (sd_notify protocol) through the parser the
// daemon runs on every datagram a worker sends (NotifyReceiver). A crash, a hang or a sanitizer
// report is a finding; a refused datagram (NotifyMessageError) is not. What it accepts must obey
// the protocol's limits, checked here so that the fuzzer finds a breach too.
//
// Built by scripts/fuzz with `-sanitize=fuzzer,address -DBGW_LIBFUZZER`, where libFuzzer owns
// `main`. Without BGW_LIBFUZZER (the normal build) it is a replayer: it runs each file named on
// the command line through the same function, to reproduce a finding under a debugger.
import BgWorkerCore

func fuzzNotifyMessage(_ bytes: UnsafeRawBufferPointer) {
    do throws(NotifyMessageError) {
        let message = try NotifyMessage(parsing: bytes)
        if bytes.count > NotifyMessage.maximumSize { fatalError("accepted \(bytes.count) bytes") }
        if let status = message.status, status.utf8.contains(0) { fatalError("NUL in STATUS") }
        if message.barrier && message != { var m = NotifyMessage(); m.barrier = true; return m }() {
            fatalError("BARRIER=1 with other fields: \(message)")
        }
        if let pid = message.mainPid, pid <= 0 { fatalError("MAINPID=\(pid)") }
    } catch .tooLarge(let size) {
        if size != bytes.count || size <= NotifyMessage.maximumSize { fatalError("tooLarge(\(size)) for \(bytes.count)") }
    } catch {
        _ = error.description
    }
}

#if BGW_LIBFUZZER
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzNotifyMessage(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
import FuzzSupport

@main
enum Replay {
    static func main() { replayFiles(CommandLine.arguments.dropFirst(), through: fuzzNotifyMessage) }
}
#endif
