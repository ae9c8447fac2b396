/// bgworker's version, the one place it is written: the daemon's `Version` property, every
/// program's `--version`, and the Debian package (scripts/package reads it from here).
public let bgworkerVersion = "0.1.0"
