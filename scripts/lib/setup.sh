# Shared by scripts/test, scripts/sanitize, scripts/fuzz and scripts/demo (sourced, not run): Debian
# packages, the toolchain, and the reading of a test run's output.

log() { printf '==> %s\n' "$*"; }

# Debian packages: build (libdbus, libsystemd headers), real components the tests and the demo
# start, and the real clients they talk with (busctl, gdbus, dbus-send, python3-dbus with
# python3-gi for GLib, setpriv, nsenter, pgrep); the Debian package's build and checks
# (dpkg-shlibdeps, strip, readelf, lintian, groff); gdb for the threads of a daemon whose test failed.
DEBIAN_PACKAGES=(
    libdbus-1-dev libsystemd-dev
    dbus dbus-daemon dbus-bin
    keepalived iproute2 systemd
    python3-dbus python3-gi libglib2.0-bin
    util-linux procps
    pacemaker corosync pacemaker-cli-utils resource-agents libxml2-utils
    dpkg-dev binutils lintian groff-base man-db
    gdb
)

# Installs DEBIAN_PACKAGES when root (apt-get update first); says so and goes on otherwise.
install_packages() {
    if [[ $(id -u) -ne 0 ]]; then
        log "not root: skipping apt-get (needs: ${DEBIAN_PACKAGES[*]})"
        return
    fi
    if ! command -v apt-get >/dev/null; then
        log "no apt-get here: skipping package installs (needs: ${DEBIAN_PACKAGES[*]})"
        return
    fi
    log "apt-get update"
    apt-get update -qq
    # Package scripts must not start services (keepalived, dbus) on a machine without an init
    # that would supervise them: a policy-rc.d that says "no" (exit 101) for the install only.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    log "apt-get install ${DEBIAN_PACKAGES[*]}"
    local rc=0 apt_log
    apt_log=$(mktemp /tmp/bgworker-apt.XXXXXX)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${DEBIAN_PACKAGES[@]}" >"$apt_log" 2>&1 || rc=$?
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    if [[ $rc -ne 0 ]]; then
        tail -n 40 "$apt_log"
        rm -f "$apt_log"
        log "apt-get install failed (exit $rc)"
        exit "$rc"
    fi
    rm -f "$apt_log"
}

# Puts Swift on PATH (it lives in /opt/swift/usr/bin on these machines) and names its version.
# Tests run built programs and the OCF agent as another user (nobody, via setpriv and ocf-tester):
# every folder above the checkout must let others through. A clone under `mktemp -d` (0700)
# does not; as root, add search permission (x, not r) to each such folder and say so.
ensure_checkout_reachable() {
    [[ $(id -u) -eq 0 ]] || return 0
    local dir
    dir=$(pwd -P)
    while [[ $dir != / ]]; do
        if [[ $(( 0$(stat -c %a "$dir") & 1 )) -eq 0 ]]; then
            log "chmod o+x $dir (tests run programs of this checkout as nobody)"
            chmod o+x "$dir"
        fi
        dir=$(dirname "$dir")
    done
}

ensure_swift() {
    if ! command -v swift >/dev/null; then
        export PATH="$PATH:/opt/swift/usr/bin"
    fi
    command -v swift >/dev/null || { log "swift not found (looked in PATH and /opt/swift/usr/bin)"; exit 1; }
    log "$(swift --version 2>&1 | head -n 1)"
}

# Makes the machine fit for the suite (root only; says what it does):
# - every dbus-daemon and systemd the tests start takes inotify instances, which all of root's
#   processes share (128 by default); a test systemd that finds none left exits before it is
#   ready, so raise the limit for this boot;
# - test helpers orphaned by an earlier, killed run (their parent is gone, so they were adopted
#   by PID 1) still hold sockets and inotify instances: end them. Only orphans whose command
#   line names the suite's own temporary folders are touched.
prepare_test_machine() {
    [[ $(id -u) -eq 0 ]] || return 0
    local limit
    limit=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
    if [[ $limit -lt 1024 ]]; then
        log "fs.inotify.max_user_instances $limit -> 1024"
        sysctl -qw fs.inotify.max_user_instances=1024 || log "could not raise fs.inotify.max_user_instances"
    fi
    local pid ppid args orphans=()
    while read -r pid ppid args; do
        [[ $ppid == 1 ]] || continue
        case $args in
            *dbus-daemon*--config-file=/tmp/bgw*|*keepalived*/tmp/bgw*|*bgworkerd*/tmp/bgw*) orphans+=("$pid") ;;
        esac
    done < <(ps -eo pid=,ppid=,args=)
    if [[ ${#orphans[@]} -gt 0 ]]; then
        log "ending ${#orphans[@]} test helpers left by an earlier run"
        kill -KILL "${orphans[@]}" 2>/dev/null || true
    fi
}

# Reads Swift Testing's output in file $1 (its own per-test lines: "✔ Test name() passed",
# "✘ Test name() failed", "➜ Test name() skipped"; ANSI colours stripped) into the globals
# tally_passed, tally_failed, tally_skipped, tally_closing (the runner's "Test run with" line) and
# tally_failures (the failed tests' lines).
tally_test_output() {
    local plain
    plain=$(sed 's/\x1b\[[0-9;]*m//g' "$1")
    tally_passed=$(grep -vE '^. Test run with ' <<<"$plain" | grep -cE '^. Test .* passed after' || true)
    tally_failures=$(grep -vE '^. Test run with ' <<<"$plain" | grep -E '^. Test .* failed after' || true)
    tally_failed=$(grep -cE . <<<"$tally_failures" || true)
    tally_skipped=$(grep -cE '^. Test .* skipped' <<<"$plain" || true)
    tally_closing=$(grep -E '^. Test run with ' <<<"$plain" | tail -n 1 || true)
}

# Whether scripts/test runs the sanitizer and fuzz runs after the suite: in CI, or when asked.
guards_wanted() {
    [[ ${BGWORKER_TEST_SANITIZE:-} == 1 ]] || { [[ ${CI:-} == true && ${BGWORKER_TEST_SANITIZE:-} != 0 ]]; }
}
