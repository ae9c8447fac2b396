import BgWorkerCore

/// bgworker's version (BgWorkerCore's `bgworkerVersion`, its one place) for the clients'
/// `--version`, without making them import the core.
public let programVersion = bgworkerVersion
