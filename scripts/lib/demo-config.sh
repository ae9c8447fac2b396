# Sourced by scripts/demo (and run by tests): writes the demo's configuration from config/ and
# its bus configuration, and tells a live demo's bus from a stale socket.
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

# demo_bus_is_live SOCKET
#   True when a bus answers on SOCKET (a live demo); false when there is no socket or only a stale
#   one left by a demo that was killed (nothing listens: connect is refused at once).
demo_bus_is_live() {
    local socket=$1
    [[ -S $socket ]] || return 1
    # busctl says Hello (dbus-send --address does not, and the bus refuses it).
    busctl --timeout=2 --address="unix:path=$socket" call org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus GetId >/dev/null 2>&1
}

# write_demo_bus_config FILE SOCKET REPO USER
#   The demo bus: the system bus's deny-by-default rules, the project's own policy files as
#   installed on a real system, and a rule that lets USER (the demo runs the daemon as you) own
#   the names and call the daemon. root may monitor, as on the real system bus, so that
#   `busctl --address=... monitor` works (BecomeMonitor is on org.freedesktop.DBus.Monitoring).
write_demo_bus_config() {
    local file=$1 socket=$2 repo=$3 user=$4
    cat >"$file" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$socket</listen>
  <auth>EXTERNAL</auth>
  <!-- As the real system bus: nobody owns a name or sends a method call unless allowed. -->
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <!-- root may monitor the bus (busctl monitor), as on the system bus. -->
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <!-- The project's own policy, as installed on a real system. -->
  <include>$repo/dbus/org.example.BgWorker.conf</include>
  <include>$repo/dbus/org.example.HAManager.conf</include>
  <!-- The demo runs the daemon as you ($user), not root: you may own its name and call it, and
       run bgworker-ha-sim as the HA manager (README: HA demo). -->
  <policy user="$user">
    <allow own="org.example.BgWorker"/>
    <allow send_destination="org.example.BgWorker"/>
    <allow own="org.example.HAManager"/>
  </policy>
</busconfig>
EOF
}
