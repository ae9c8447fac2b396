import Testing
@testable import BgWorkerDaemon
@Test func placeholderDaemon() {}
