import Testing
@testable import BgWorkerCore
@Test func placeholder() {}
