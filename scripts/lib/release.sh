# Sourced by scripts/install, scripts/package and scripts/test: the release build of the
# programs that are installed, with the Swift standard library linked statically so that they
# run where the toolchain is not (only the system's libraries remain dynamic; a test checks
# that with ldd).

RELEASE_PRODUCTS=(bgworkerd bgworkerctl bgworker-example bgworker-ha-sim)
RELEASE_FLAGS=(-c release --static-swift-stdlib)

# Builds RELEASE_PRODUCTS (incrementally; minutes the first time) and sets release_bin to their
# folder.
build_release() {
    local product
    for product in "${RELEASE_PRODUCTS[@]}"; do
        log "swift build ${RELEASE_FLAGS[*]} --product $product"
        swift build "${RELEASE_FLAGS[@]}" --product "$product"
    done
    release_bin=$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)
}

# The version, from its one place (Sources/BgWorkerCore/Version.swift).
bgworker_version() {
    sed -nE 's/^public let bgworkerVersion = "([^"]+)"$/\1/p' Sources/BgWorkerCore/Version.swift
}
