// libFuzzer target: the bytes of a main configuration file, through the TOML parser, the
// configuration's checks and the validation for every runner, as the daemon loads a file
// (ConfigurationLoader decodes the bytes the same way). A crash, a hang or a leak of the
// sanitizers is a finding; a refused file (errors returned) is not.
//
// Built by scripts/fuzz with `-sanitize=fuzzer,address -DBGW_LIBFUZZER`, where libFuzzer owns
// `main`. Without BGW_LIBFUZZER (the normal build) it is a replayer: it runs each file named on
// the command line through the same function, to reproduce a finding under a debugger.
import BgWorkerCore

func fuzzConfiguration(_ bytes: UnsafeRawBufferPointer) {
    let text = String(decoding: bytes, as: UTF8.self)
    _ = try? parseTOML(text)
    switch Configuration.parse(main: SourceFile(path: "/fuzz/bgworkerd.toml", text: text)) {
    case .success(let configuration):
        for runner in RunnerKind.allCases { _ = configuration.validate(for: runner) }
    case .failure(let errors):
        // Every error names the file and a line inside it.
        for error in errors.errors where error.file != "/fuzz/bgworkerd.toml" || error.line < 0 {
            fatalError("error outside the file: \(error)")
        }
    }
}

#if BGW_LIBFUZZER
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzConfiguration(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
import FuzzSupport

@main
enum Replay {
    static func main() { replayFiles(CommandLine.arguments.dropFirst(), through: fuzzConfiguration) }
}
#endif
