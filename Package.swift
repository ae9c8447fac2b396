// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "bgworker",
    products: [
        .library(name: "DBus", targets: ["DBus"]),
        .executable(name: "bgworkerd", targets: ["bgworkerd"]),
        .executable(name: "bgworkerctl", targets: ["bgworkerctl"]),
        .executable(name: "bgworker-example", targets: ["bgworker-example"]),
        .executable(name: "bgworker-ha-sim", targets: ["bgworker-ha-sim"]),
        .executable(name: "bgworker-bench", targets: ["bgworker-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        // System libraries and the tiny C shim.
        .systemLibrary(name: "CDBus", pkgConfig: "dbus-1", providers: [.apt(["libdbus-1-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .target(name: "CShims"),
        // One copy of the Linux helpers (threads, clock, errno, NSS look-ups) for every target.
        .target(name: "SystemSupport", dependencies: ["CShims"]),

        // Our D-Bus layer on libdbus: knows nothing of workers.
        // CShims: in ThreadSanitizer builds it makes Mutex's contended path visible to TSan in
        // every executable that uses the bus (docs/sanitizers.md); nothing otherwise.
        .target(name: "DBus", dependencies: ["CDBus", "CShims", "SystemSupport"]),

        // The contract's names on the bus (bus name, paths, interfaces, errors, members, the worker
        // path escaping) for every program that speaks it. Standard library only.
        .target(name: "BgWorkerAPI"),

        // Pure logic: config, state machine, restart policy, run rule, reconcile, reload diff.
        .target(name: "BgWorkerCore", dependencies: ["BgWorkerAPI"]),

        // The supervisor, runners, HA sources, the bus service, journal, sd_notify.
        .target(
            name: "BgWorkerDaemon",
            dependencies: [
                "DBus", "BgWorkerAPI", "BgWorkerCore", "CShims", "CSystemd", "SystemSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // What the small clients share: --bus parsing, termination signals, whole-line output.
        .target(
            name: "ClientSupport",
            dependencies: ["DBus", "BgWorkerCore", "SystemSupport", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),

        // Thin executables.
        .executableTarget(
            name: "bgworkerd",
            dependencies: [
                "BgWorkerDaemon", "ClientSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "bgworkerctl",
            dependencies: [
                "DBus", "BgWorkerAPI", "ClientSupport", "BgWorkerCore", "CShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "bgworker-example",
            dependencies: [
                "DBus", "BgWorkerAPI", "ClientSupport", "BgWorkerCore", "CSystemd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "bgworker-ha-sim",
            dependencies: [
                "DBus", "ClientSupport", "BgWorkerCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "bgworker-bench",
            dependencies: [
                "DBus", "CDBus", "BgWorkerAPI", "BgWorkerCore", "TestSupport", "CShims", "ClientSupport", "SystemSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Test helper: runs the process runner so that a test can SIGKILL it like the daemon.
        .executableTarget(name: "bgworker-runner-probe", dependencies: ["BgWorkerDaemon"]),

        // libFuzzer targets (scripts/fuzz builds them with -sanitize=fuzzer); in the normal build
        // they replay files named on the command line. See docs/sanitizers.md.
        .target(name: "FuzzSupport", path: "Tests/Fuzz/FuzzSupport"),
        .executableTarget(name: "bgworker-fuzz-config", dependencies: ["BgWorkerCore", "FuzzSupport"],
                          path: "Tests/Fuzz/config", exclude: ["corpus", "crashes", "regressions"]),
        .executableTarget(name: "bgworker-fuzz-dbus-message", dependencies: ["DBus", "FuzzSupport"],
                          path: "Tests/Fuzz/dbus-message", exclude: ["corpus", "crashes"]),
        .executableTarget(name: "bgworker-fuzz-notify-message", dependencies: ["BgWorkerCore", "FuzzSupport"],
                          path: "Tests/Fuzz/notify-message", exclude: ["corpus", "crashes", "README.md"]),

        // Starts real components for tests and the benchmark: buses, keepalived pairs, systemd.
        .target(name: "TestSupport", dependencies: ["CShims", "SystemSupport"]),

        .testTarget(name: "DBusTests", dependencies: ["DBus", "TestSupport"]),
        .testTarget(name: "BgWorkerCoreTests", dependencies: ["BgWorkerAPI", "BgWorkerCore", "TestSupport"], exclude: ["toml-test"]),
        .testTarget(name: "BgWorkerDaemonTests", dependencies: ["BgWorkerAPI", "BgWorkerDaemon", "TestSupport"],
                    exclude: ["Fixtures"]),
        // bgworkerctl, bgworker-example and bgworker-ha-sim, run as real processes.
        .testTarget(name: "ClientsTests", dependencies: ["DBus", "BgWorkerAPI", "TestSupport"]),
    ]
)
