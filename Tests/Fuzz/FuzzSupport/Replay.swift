import Foundation

/// What a fuzz target's replayer (its normal build, without libFuzzer) does: runs each file named
/// on the command line through `fuzzOne`, as libFuzzer would, so that a finding in
/// Tests/Fuzz/<target>/crashes reproduces under a debugger.
public func replayFiles(_ paths: some Sequence<String>, through fuzzOne: (UnsafeRawBufferPointer) -> Void) {
    for path in paths {
        guard let bytes = FileManager.default.contents(atPath: path) else { fatalError("cannot read \(path)") }
        bytes.withUnsafeBytes(fuzzOne)
        print("\(path): done")
    }
}
