#!/usr/bin/env python3
# Beyond the brief's list: the bus going away and coming back, a worker that writes an endless
# line, and file-descriptor exhaustion by Inhibit (each held inhibitor is an fd in the daemon).
# Usage: scripts/adversarial/run scripts/adversarial/misc.py [--seed N] [--only bus|line|fds]
import argparse, os, resource, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--only", default="")
ap.add_argument("--inhibits", type=int, default=1100)
ap.add_argument("--root", default="/tmp/adv-misc")
args = ap.parse_args()
log("seed", args.seed)
problems = []


def rss_kb(pid):
    for l in open("/proc/%d/status" % pid):
        if l.startswith("VmRSS"):
            return int(l.split()[1])


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def respawning(rig, name, n=3, timeout=15):
    seen = set()
    def more():
        p = rig.list()[name]["pid"]
        if p: seen.add(p)
        return len(seen) >= n
    wait_for("%s respawns" % name, more, timeout)


def logs(m, name):
    try:
        out = m.Logs(name, dbus.UInt32(2))
        return "%d lines of %s" % (len(out), [len(t) for _, t in out])
    except dbus.DBusException as e:
        return "%s: %s" % (e.get_dbus_name(), e.get_dbus_message())


def main():
    w = {"s0": toml_worker("s0", STEADY),
         "c0a": toml_worker("c0a", CRASH_FAST, restart_delay=0.0, start_limit_burst=0),
         "line": toml_worker("line", [SH, "-c", "exec tr -d '\\n' < /dev/zero"], enabled=False)}
    rig = Rig(args.root, w)
    shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
    rig.start_bus(); rig.start_daemon()
    m = rig.mgr()
    dpid = rig.daemon.pid
    wait_for("s0 running", lambda: rig.list()["s0"]["state"] == "running")
    if args.only in ("", "line"):
        r0 = rss_kb(dpid)
        print(call(m, "Enable", "line"))
        time.sleep(5)  # measurement window: how much the daemon keeps of an endless line
        r1 = rss_kb(dpid)
        log("endless line: daemon RSS %d kB -> %d kB after 5 s; Logs answers %s" % (r0, r1, logs(m, "line")))
        if r1 - r0 > 200_000:
            problems.append("endless line: daemon RSS grew %d kB in 5 s" % (r1 - r0))
        print(call(m, "Disable", "line"))
        if rig.daemon.poll() is not None:
            problems.append("daemon died on an endless line: %s" % rig.daemon.returncode); return
    if args.only == "fds":  # Inhibit is not built yet (dbus/org.example.BgWorker.xml)
        lim = resource.getrlimit(resource.RLIMIT_NOFILE)
        held = []
        c = rig.conn(); mi = rig.mgr(c)
        errs = collections.Counter()
        f0 = fds(dpid)
        for i in range(args.inhibits):
            try:
                fd = mi.Inhibit("adv%d" % i, "fd flood", timeout=30)
                held.append(fd.take())
            except dbus.DBusException as e:
                errs[e.get_dbus_name()] += 1
                if errs[e.get_dbus_name()] > 20: break
        f1 = fds(dpid)
        dlim = open("/proc/%d/limits" % dpid).read()
        dlim = [l for l in dlim.splitlines() if "open files" in l]
        log("Inhibit flood: %d held, errors %s, daemon fds %d -> %d, its limit %s" % (len(held), dict(errs), f0, f1, dlim))
        try:
            respawning(rig, "c0a")
        except TimeoutError as e:
            problems.append("with %d inhibitors held, c0a no longer respawns: %s; state %s" % (len(held), e, rig.list().get("c0a")))
        out = call(m, "Disable", "s0"); out2 = call(m, "Enable", "s0")
        log("Disable/Enable s0 with fds held: %s %s; listing %s" % (out, out2, rig.list()))
        for fd in held: os.close(fd)
        try:
            wait_for("maintenance over", lambda: not rig.conn().get_object(NAME, MGR, introspect=False).Get(NAME, "Maintenance", dbus_interface="org.freedesktop.DBus.Properties"), 30)
            wait_for("s0 running again", lambda: rig.list()["s0"]["state"] == "running", 30)
            respawning(rig, "c0a")
        except TimeoutError as e:
            problems.append("after releasing the inhibitors: %s; %s" % (e, rig.list()))
        log("after release: daemon fds %d, listing %s" % (fds(dpid), rig.list()))
        if rig.daemon.poll() is not None:
            problems.append("daemon died in the fd flood: %s" % rig.daemon.returncode); return
    if args.only in ("", "bus"):
        pids = {n: v["pid"] for n, v in rig.list().items()}
        rig.bus.kill(); rig.bus.wait()
        time.sleep(2)  # measurement window: what the daemon does without its bus
        alive = rig.daemon.poll() is None
        s0 = [p for p, v in tagged().items() if v[0] == "s0" and v[4] != "Z"]
        log("bus killed: daemon alive %s (status %s), s0 processes %s (was %d)" % (alive, rig.daemon.returncode, s0, pids["s0"]))
        if not alive:
            problems.append("the daemon died when its bus went away: status %s; log tail: %s" % (
                rig.daemon.returncode, open(rig.daemon_log).read()[-1500:]))
            return
        rig.start_bus()
        try:
            c = rig.conn()
            wait_for("daemon owns its name again", lambda: c.name_has_owner(NAME), 60)
            log("bus back: daemon reconnected, listing %s" % rig.list())
        except TimeoutError as e:
            problems.append("bus back, but the daemon did not come back on it within 60 s: %s" % e)
    rig.stop()


main()
log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
