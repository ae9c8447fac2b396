// Reads the configuration from disk: the main file, then every `*.toml` of the workers directory
// in name order. The parsing and validation are BgWorkerCore's; this file only does the I/O.
import BgWorkerCore
import Glibc

/// Loads `bgworkerd.toml` and its drop-ins.
public struct ConfigurationLoader: Sendable {
    /// The main file, e.g. `/etc/bgworker/bgworkerd.toml`.
    public var mainPath: String

    public init(mainPath: String) {
        self.mainPath = mainPath
    }

    /// The folder of drop-in files: `[daemon] workers-directory` as written, relative to the main
    /// file's folder unless absolute.
    public func workersDirectory(of configuration: Configuration) -> String {
        let written = configuration.daemon.workersDirectory
        if written.hasPrefix("/") { return written }
        return directoryName(of: mainPath) + "/" + written
    }

    /// Reads and parses everything; every problem is returned (unreadable files included), each
    /// with its file and line. The core parses twice: the main file alone to learn the workers
    /// directory, then the main file with the drop-ins.
    public func load(validatingFor runner: RunnerKind) -> Result<Configuration, ConfigErrors> {
        let main: SourceFile
        switch readSourceFile(mainPath) {
        case .success(let file): main = file
        case .failure(let error): return .failure(ConfigErrors([error]))
        }
        let directory: String
        switch Configuration.parse(main: main) {
        case .success(let first):
            directory = workersDirectory(of: first)
        case .failure(let errors):
            // The drop-ins are still checked, so that one answer lists every file's errors;
            // only a main file that names no usable directory keeps them unread.
            guard let written = Configuration.workersDirectory(writtenIn: main) else { return .failure(errors) }
            var settings = Configuration()
            settings.daemon.workersDirectory = written
            directory = workersDirectory(of: settings)
        }
        var dropIns: [SourceFile] = []
        var errors: [ConfigError] = []
        for path in dropInPaths(in: directory) {
            switch readSourceFile(path) {
            case .success(let file): dropIns.append(file)
            case .failure(let error): errors.append(error)
            }
        }
        let configuration: Configuration
        switch Configuration.parse(main: main, dropIns: dropIns) {
        case .success(let parsed): configuration = parsed
        case .failure(let parseErrors): return .failure(ConfigErrors(errors + parseErrors.errors))
        }
        errors += configuration.validate(for: runner)
        // What cannot run is refused here, at start and at Reload, not found at its first start.
        errors += configuration.validate(on: SystemWorkerHost())
        return errors.isEmpty ? .success(configuration) : .failure(ConfigErrors(errors))
    }

    /// `*.toml` regular files (or links to them) of `directory`, sorted by name (bytewise, as
    /// `ls` in the C locale). A missing folder has none.
    func dropInPaths(in directory: String) -> [String] {
        guard let stream = opendir(directory) else { return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = direntName(entry)
            guard name.hasSuffix(".toml"), !name.hasPrefix(".") else { continue }
            var info = stat()
            guard stat(directory + "/" + name, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
            names.append(name)
        }
        return names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }.map { directory + "/" + $0 }
    }

    private func readSourceFile(_ path: String) -> Result<SourceFile, ConfigError> {
        switch readWholeFile(path) {
        case .success(let bytes):
            return .success(SourceFile(path: path, bytes: bytes))
        case .failure(let error):
            return .failure(ConfigError(file: path, line: 0, message: "cannot read the file: \(errnoText(error.errno))"))
        }
    }
}

/// The folder part of a path (`/etc/bgworker` for `/etc/bgworker/bgworkerd.toml`, `.` for a bare name).
func directoryName(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    if slash == path.startIndex { return "/" }
    return String(path[..<slash])
}

/// The whole content of a file (`open`, `read` until end of file).
func readWholeFile(_ path: String) -> Result<[UInt8], SystemCallError> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(SystemCallError(call: "open \(path)", errno: errno)) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { raw in retryOnInterrupt { read(fd, raw.baseAddress, raw.count) } }
        if count < 0 { return .failure(SystemCallError(call: "read \(path)", errno: errno)) }
        if count == 0 { return .success(bytes) }
        bytes += chunk[0..<count]
    }
}
