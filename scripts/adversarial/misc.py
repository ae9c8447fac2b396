#!/usr/bin/env python3
# Beyond the brief's list: the bus going away and coming back, a worker that writes an endless
# line (and one that writes NULs without end), and file-descriptor exhaustion by Inhibit (each held
# inhibitor is an fd in the daemon; the daemon runs under LimitNOFILE 1024:1024, so it holds at
# most 256 and answers LimitsExceeded beyond).
# Usage: scripts/adversarial/run scripts/adversarial/misc.py [--seed N] [--only bus|line|fds]
#        (the default runs line and bus; fds only with --only fds)
import argparse, os, random, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--only", default="")
ap.add_argument("--inhibits", type=int, default=1100)
ap.add_argument("--bus-rounds", type=int, default=5)
ap.add_argument("--nofile", type=int, default=1024, help="the daemon's RLIMIT_NOFILE (soft and hard) with --only fds")
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
    """The byte length of each of the last two lines of `name`, or the error."""
    try:
        return [len(str(t).encode()) for _, t in m.Logs(name, dbus.UInt32(2))]
    except dbus.DBusException as e:
        return "%s: %s" % (e.get_dbus_name(), e.get_dbus_message())


def main():
    # c0a runs during maintenance: it must keep respawning while the Inhibit flood holds it.
    w = {"s0": toml_worker("s0", STEADY),
         "c0a": toml_worker("c0a", CRASH_FAST, restart_delay=0.0, start_limit_burst=0, run_during_maintenance=True),
         "line": toml_worker("line", [SH, "-c", "yes x | tr -d '\\n'"], enabled=False),
         "zeros": toml_worker("zeros", [SH, "-c", "exec cat /dev/zero"], enabled=False)}
    rig = Rig(args.root, w)
    shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
    if args.only == "fds":
        rig.daemon_prefix = ["prlimit", "--nofile=%d:%d" % (args.nofile, args.nofile), "--"]
    rig.start_bus(); rig.start_daemon()
    m = rig.mgr()
    dpid = rig.daemon.pid
    wait_for("s0 running", lambda: rig.list()["s0"]["state"] == "running")
    if args.only in ("", "line"):
        # An endless line is cut every 4096 bytes; NULs end lines but make no empty ones
        # (docs/process-runner.md, Output), so /dev/zero leaves no line at all.
        for name, want in (("line", lambda l: l and all(n == 4096 for n in l)), ("zeros", lambda l: l == [])):
            r0 = rss_kb(dpid)
            out = call(m, "Enable", name)
            time.sleep(5)  # measurement window: how much the daemon keeps of an endless line
            r1 = rss_kb(dpid)
            got = logs(m, name)
            log("%s: Enable %s, daemon RSS %d kB -> %d kB after 5 s; Logs: bytes of the last lines %s" % (name, out, r0, r1, got))
            if r1 - r0 > 200_000:
                problems.append("%s: daemon RSS grew %d kB in 5 s" % (name, r1 - r0))
            if not isinstance(got, list) or not want(got):
                problems.append("%s: Logs answered %s" % (name, got))
            out = call(m, "Disable", name)
            if out != "ok":
                problems.append("%s: Disable answered %s" % (name, out))
            if rig.daemon.poll() is not None:
                problems.append("daemon died on %s: %s" % (name, rig.daemon.returncode)); return
    if args.only == "fds":
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
        cap = min(4096, args.nofile // 4)
        if len(held) != min(cap, args.inhibits) or set(errs) - {"org.freedesktop.DBus.Error.LimitsExceeded"}:
            problems.append("Inhibit flood: %d held (expected %d), errors %s" % (len(held), min(cap, args.inhibits), dict(errs)))
        if rig.list()["s0"]["state"] != "standby":
            problems.append("s0 not in standby with %d inhibitors held: %s" % (len(held), rig.list()["s0"]))
        try:
            respawning(rig, "c0a")
        except TimeoutError as e:
            problems.append("with %d inhibitors held, c0a no longer respawns: %s; state %s" % (len(held), e, rig.list().get("c0a")))
        out = call(m, "Disable", "s0"); out2 = call(m, "Enable", "s0")
        log("Disable/Enable s0 with fds held: %s %s; listing %s" % (out, out2, rig.list()))
        if (out, out2) != ("ok", "ok") or rig.list()["s0"] != dict(state="standby", enabled=True, pid=0):
            problems.append("Disable/Enable s0 in maintenance: %s %s, then %s" % (out, out2, rig.list()["s0"]))
        for fd in held: os.close(fd)
        try:
            wait_for("maintenance over", lambda: not rig.conn().get_object(NAME, MGR, introspect=False).Get(NAME, "Maintenance", dbus_interface="org.freedesktop.DBus.Properties"), 30)
            wait_for("s0 running again", lambda: rig.list()["s0"]["state"] == "running", 30)
            respawning(rig, "c0a")
        except TimeoutError as e:
            problems.append("after releasing the inhibitors: %s; %s" % (e, rig.list()))
        log("after release: daemon fds %d, listing %s" % (fds(dpid), rig.list()))
        if fds(dpid) > f0 + 2:
            problems.append("daemon fds %d after every inhibitor was released, %d before" % (fds(dpid), f0))
        if rig.daemon.poll() is not None:
            problems.append("daemon died in the fd flood: %s" % rig.daemon.returncode); return
    if args.only in ("", "bus"):
        # Rounds of: an Enable/Disable of s0 in flight (its reply may be lost), the bus killed at a
        # random moment and kept away a random while, then back: the daemon lives, reconnects,
        # and its listing agrees with /proc; s0's intent is the last one a reply confirmed, or the
        # one in flight.
        import threading
        rnd = random.Random(args.seed)
        replied = rig.list()["s0"]["enabled"]
        for r in range(args.bus_rounds):
            pids = {n: v["pid"] for n, v in rig.list().items()}
            want = rnd.random() < 0.5
            res = {}
            def flight(want=want, res=res):
                try:
                    res["out"] = call(rig.mgr(), "Enable" if want else "Disable", "s0", timeout=10)
                except dbus.DBusException as e:  # the connection itself gone
                    res["out"] = e.get_dbus_name()
            t = threading.Thread(target=flight); t.start()
            time.sleep(rnd.uniform(0, 0.05))
            rig.bus.kill(); rig.bus.wait()
            t.join(15)
            down = rnd.uniform(0.05, 2.0)
            time.sleep(down)  # the daemon without its bus
            alive = rig.daemon.poll() is None
            s0 = [p for p, v in tagged().items() if v[0] == "s0" and v[4] != "Z"]
            log("bus round %d: %s s0 -> %s, bus killed for %.2f s: daemon alive %s, s0 processes %s (was %d)" % (
                r, "Enable" if want else "Disable", res.get("out"), down, alive, s0, pids["s0"]))
            if not alive:
                problems.append("the daemon died when its bus went away: status %s; log tail: %s" % (
                    rig.daemon.returncode, open(rig.daemon_log).read()[-1500:]))
                return
            rig.start_bus()
            try:
                c = rig.conn()
                wait_for("daemon owns its name again", lambda: c.name_has_owner(NAME), 60)
            except TimeoutError as e:
                problems.append("bus round %d: bus back, but the daemon did not come back on it within 60 s: %s" % (r, e))
                return
            m = rig.mgr()
            l = rig.wait_settled("settled after the bus came back", 30, ("c0a",))
            if res.get("out") == "ok":
                replied = want
            if l["s0"]["enabled"] not in (replied, want) or (res.get("out") == "ok" and l["s0"]["enabled"] != want):
                problems.append("bus round %d: s0 Enabled %s; replied %s, in flight %s (%s)" % (
                    r, l["s0"]["enabled"], replied, want, res.get("out")))
            replied = l["s0"]["enabled"]
            probs = []
            for attempt in range(50):
                probs = proc_problems(rig.list(), only=["s0", "line", "zeros"])
                if not probs:
                    break
                time.sleep(0.1)
            problems.extend("bus round %d: %s" % (r, p) for p in probs)
            try:
                respawning(rig, "c0a")
            except TimeoutError as e:
                problems.append("bus round %d: %s" % (r, e))
        log("bus rounds: %d, listing at the end %s" % (args.bus_rounds, rig.list()))
    rig.stop()


main()
log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
