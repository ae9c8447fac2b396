# Sourced by scripts/demo (and run by a test): writes the demo's configuration from config/.
#
# write_demo_config DEMO_DIR BIN_DIR ADMIN_GROUP
#   DEMO_DIR/bgworkerd.toml and DEMO_DIR/workers.d/*.toml: the shipped example with the built
#   worker (BIN_DIR/bgworker-example), state in DEMO_DIR/state, no HA (the demo has no keepalived:
#   every enabled worker runs) and ADMIN_GROUP as the group that may change state.
#   Run from the repository's root.
write_demo_config() {
    local demo=$1 bin=$2 group=$3
    mkdir -p "$demo/workers.d"
    local worker="s#/usr/libexec/bgworker/bgworker-example#$bin/bgworker-example#g"
    sed -e "$worker" \
        -e "s#^state-directory = .*#state-directory = \"$demo/state\"#" \
        -e "s#^admin-group = .*#admin-group = \"$group\"#" \
        -e 's|^source = "keepalived".*|source = "none"                         # the demo has no HA manager|' \
        -e '/^instance = /d' \
        config/bgworkerd.toml >"$demo/bgworkerd.toml"
    rm -f "$demo"/workers.d/*.toml
    local dropin
    for dropin in config/workers.d/*.toml; do
        sed -e "$worker" "$dropin" >"$demo/workers.d/$(basename "$dropin")"
    done
}
