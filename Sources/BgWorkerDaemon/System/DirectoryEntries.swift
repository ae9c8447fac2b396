import Glibc

/// The names in a directory, without `.` and `..`; nil when it cannot be opened. Each name is
/// read in place (`direntName`).
func directoryEntryNames(_ path: String) -> [String]? {
    guard let stream = opendir(path) else { return nil }
    defer { closedir(stream) }
    var names: [String] = []
    while let entry = readdir(stream) {
        let name = direntName(entry)
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}
