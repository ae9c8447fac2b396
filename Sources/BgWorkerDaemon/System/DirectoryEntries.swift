import Glibc

/// The names in a directory, without `.` and `..`; nil when it cannot be opened.
///
/// Each name is read in place, as a C string: a `dirent` from readdir is only as long as its
/// record (`d_reclen`), so copying the whole 256-byte `d_name` field (what reading
/// `entry.pointee.d_name` does) reads past the end of the last record in readdir's buffer.
/// AddressSanitizer caught that as a heap-buffer-overflow while the daemon read /proc.
func directoryEntryNames(_ path: String) -> [String]? {
    guard let stream = opendir(path) else { return nil }
    defer { closedir(stream) }
    // d_name is a fixed field of a C struct: its offset always exists.
    let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
    var names: [String] = []
    while let entry = readdir(stream) {
        let name = String(cString: (UnsafeRawPointer(entry) + nameOffset).assumingMemoryBound(to: CChar.self))
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}
