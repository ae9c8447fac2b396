#!/usr/bin/env python3
# The respawn path's caches (63d2483): the supervisor keeps each worker's LaunchSpec while its
# definition and effective level are equal (dropped at every reload), the runner keeps the
# PreparedLaunch while the spec is equal (dropped at a stop request), and the child writes
# WATCHDOG_PID into that kept launch. A stale cache would start a process with the environment,
# argv or user of an older definition or level. Workers crash in a tight loop (restart-delay 0)
# while the script, one change at a time, sets the manager's LogLevel, the worker's own LogLevel
# (or "" to follow), reloads a changed `environment`/`exec`/`user`/`log-level` (Reload or
# SIGHUP), Stop/Start, Disable/Enable, Restart. Every process writes a record at its start (pid,
# start time from /proc/self/stat, BGWORKER_LOG_LEVEL, the configured variables, argv,
# WATCHDOG_PID; the file's owner is its uid). A process that started after the change was
# acknowledged (+ MARGIN, start times are in 10 ms ticks) and before the next change was issued
# must carry exactly what was in force: the bus's EffectiveLogLevel read after the
# acknowledgement, the configured variables (a removed one absent), argv, uid. `wd` has a watchdog:
# its WATCHDOG_PID must be its own pid at every respawn. A sampler checks /proc for two live
# sessions of one worker at once (rechecked, so that a reading across an exit is not counted).
# Usage: scripts/adversarial/run scripts/adversarial/respawn_cache.py [--seed N] [--steps N]
#        (exit 1 on a PROBLEM)
import os, sys, time, threading, argparse
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--steps", type=int, default=120)
ap.add_argument("--margin", type=float, default=0.05, help="seconds after an acknowledgement before a start must show it")
args = ap.parse_args()
rnd = random.Random(args.seed)
log("seed", args.seed)

ROOT = "/tmp/adv-respawn-cache"
REC = os.path.join(ROOT, "rec")
shutil.rmtree(ROOT, ignore_errors=True)
os.makedirs(REC)
os.chmod(REC, 0o1777)
LEVELS = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
# dash: argv first (set -- replaces it), then field 22 of /proc/self/stat (the start time in
# ticks since boot; comm is "(sh)", no spaces). printf is a builtin: no fork before the record.
RECORD = ('a0=$0; a1=$1; read -r s < /proc/self/stat; set -- $s; st=${22}; '
          'printf "%%s\\n" "pid=$$" "start=$st" "level=$BGWORKER_LOG_LEVEL" "var=${ADV_VAR-UNSET}" '
          '"gone=${ADV_GONE-UNSET}" "wpid=${WATCHDOG_PID-UNSET}" "notify=${NOTIFY_SOCKET-UNSET}" '
          '"arg=$a0/$a1" "name=$BGWORKER_NAME" end > %s/$BGWORKER_NAME.$$.$st; %s')
CRASHERS = {"rc": "sleep 0.02; exit 3", "rc2": "exit 4", "wd": "sleep 0.03; exit 5", "slow": "sleep 0.05; exit 6"}
# `slow` waits 0.2 s before each respawn: a Reload then often finds it between two processes,
# where no stop request drops the runner's kept launch (the spec alone must tell it apart).
DELAY = {"slow": 0.2}
TICK = os.sysconf("SC_CLK_TCK")


def definition(name, gen):
    """The drop-in of `name` for generation `gen` (a dict): its text and what a process must show."""
    lines = ["[worker.%s]" % name,
             "exec = %s" % json.dumps([SH, "-c", RECORD % (REC, CRASHERS[name]), name, gen["arg"]]),
             'run-on = "any"', "restart-delay = %s" % DELAY.get(name, 0),
             "restart-delay-max = %s" % DELAY.get(name, 0), "start-limit-burst = 0",
             "stop-timeout = 1.0"]
    if name == "wd":
        lines.append("watchdog = 30")
    if gen["user"] == "nobody":
        lines.append('user = "nobody"')
    if gen["loglevel"]:
        lines.append('log-level = "%s"' % gen["loglevel"])
    env = {TAG: "1", "ADV_VAR": gen["var"]}
    if gen["gone"] is not None:
        env["ADV_GONE"] = gen["gone"]
    lines.append("environment = { %s }" % ", ".join('%s = "%s"' % kv for kv in env.items()))
    return "\n".join(lines) + "\n"


def random_gen(n, old=None):
    """A new generation of a definition: each part changes on its own (a cache keyed on one part
    only must be caught by a change of another)."""
    new = dict(arg="a%d" % n, var="v%d" % n, gone=rnd.choice([None, "g%d" % n]),
               user=rnd.choice(["root", "root", "nobody"]), loglevel=rnd.choice([None, None] + LEVELS))
    if old is None:
        return new
    out = {k: (new[k] if rnd.random() < 0.4 else old[k]) for k in new}
    if out == old:
        out["var"] = new["var"]
    return out


def records():
    out = []
    for f in os.listdir(REC):
        p = os.path.join(REC, f)
        try:
            text = open(p).read()
            uid = os.stat(p).st_uid
        except OSError:
            continue
        if not text.endswith("end\n"):
            continue  # still being written
        r = dict(l.split("=", 1) for l in text.splitlines() if "=" in l)
        r["uid"] = uid
        r["file"] = f
        r["t"] = int(r["start"]) / TICK
        out.append(r)
    return out


# The sampler: two live sessions of one worker at the same time.
stop_sampler = threading.Event()
overlaps = []


def sessions():
    out = {}
    for pid, (name, pgid, ppid, comm, st) in tagged().items():
        if st == "Z":
            continue
        try:
            out.setdefault(name, {}).setdefault(os.getsid(pid), []).append(pid)
        except OSError:
            continue
    return out


def alive(pid):
    try:
        st = open("/proc/%d/stat" % pid).read()
        return st[st.rindex(")") + 2] != "Z"
    except OSError:
        return False


def sampler():
    while not stop_sampler.is_set():
        for name, sids in sessions().items():
            if len(sids) < 2:
                continue
            # Both sets seen; recheck that a process of each is still alive now (an exit between
            # two reads of /proc is not an overlap).
            live = {sid: [p for p in pids if alive(p)] for sid, pids in sids.items()}
            live = {sid: pids for sid, pids in live.items() if pids}
            if len(live) > 1:
                overlaps.append((time.monotonic(), name, live))
        time.sleep(0.003)


gens = {n: [] for n in CRASHERS}  # per worker: list of (issued, acked, expected)
current = {n: random_gen(0) for n in CRASHERS}
rig = Rig(ROOT, {n: definition(n, current[n]) for n in CRASHERS})
rig.start_bus()
rig.start_daemon()
c = rig.conn()
m = rig.mgr(c)
props = dbus.Interface(c.get_object(NAME, MGR, introspect=False), "org.freedesktop.DBus.Properties")
wpaths = {n: m.GetWorker(n) for n in CRASHERS}
wprops = {n: dbus.Interface(c.get_object(NAME, p, introspect=False), "org.freedesktop.DBus.Properties")
          for n, p in wpaths.items()}
now = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)


def effective(n):
    return str(wprops[n].Get(NAME + ".Worker", "EffectiveLogLevel"))


def acknowledge(issued, running=None):
    """Records a generation for each worker: what a process started from now on must show."""
    acked = now()
    for n in CRASHERS:
        exp = dict(current[n], level=effective(n))
        if running is not None:
            exp["running"] = running.get(n, True)
        gens[n].append((issued, acked, exp))


def reloaded_count():
    try:
        return open(rig.daemon_log, errors="replace").read().count("configuration reloaded")
    except OSError:
        return 0


acknowledge(0.0)
th = threading.Thread(target=sampler, daemon=True)
th.start()
problems = []
counts = collections.Counter()
for step in range(1, args.steps + 1):
    kind = rnd.choice(["mgr", "own", "own", "reload", "reload", "sighup", "stopstart", "disen", "restart"])
    counts[kind] += 1
    running = None
    issued = now()
    if kind == "mgr":
        props.Set(NAME, "LogLevel", dbus.String(rnd.choice(LEVELS), variant_level=1))
    elif kind == "own":
        n = rnd.choice(list(CRASHERS))
        wprops[n].Set(NAME + ".Worker", "LogLevel", dbus.String(rnd.choice(LEVELS + [""]), variant_level=1))
    elif kind in ("reload", "sighup"):
        for n in CRASHERS:
            if rnd.random() < 0.7:
                current[n] = random_gen(step, current[n])
        rig.set_workers({n: definition(n, current[n]) for n in CRASHERS})
        if kind == "reload":
            out = call(m, "Reload", timeout=60)
            if out != "ok":
                problems.append("step %d: Reload answered %s" % (step, out))
        else:
            # Its acknowledgement is the daemon's "configuration reloaded" line (a notice): the
            # manager's level must let it through, a change of its own first.
            if str(props.Get(NAME, "LogLevel")) not in LEVELS[:4]:
                props.Set(NAME, "LogLevel", dbus.String(rnd.choice(LEVELS[:4]), variant_level=1))
                acknowledge(issued)
                issued = now()
            before = reloaded_count()
            rig.daemon.send_signal(signal.SIGHUP)
            wait_for("SIGHUP's reload", lambda: reloaded_count() > before, 30)
    elif kind in ("stopstart", "disen"):
        n = rnd.choice(list(CRASHERS))
        off, on = ("Stop", "Start") if kind == "stopstart" else ("Disable", "Enable")
        out = call(m, off, n)
        # Between the two: nothing of n may start (it is stopped); a generation with running False.
        acknowledge(issued, {n: False})
        time.sleep(rnd.uniform(0, 0.1))
        issued = now()
        out2 = call(m, on, n)
        if (out, out2) != ("ok", "ok"):
            problems.append("step %d: %s/%s %s -> %s/%s" % (step, off, on, n, out, out2))
    elif kind == "restart":
        n = rnd.choice(list(CRASHERS))
        out = call(m, "Restart", n)
        if out != "ok":
            counts["restart " + out] += 1
    acknowledge(issued, running)
    time.sleep(rnd.uniform(0.05, 0.3))

time.sleep(0.3)
end = now()
stop_sampler.set()
th.join()
for n in CRASHERS:
    call(m, "Stop", n)
listing = rig.wait_settled("stopped")
problems += proc_problems(listing)

# Judge every record.
checked = skipped = 0
recs = records()
for r in recs:
    n = r["name"]
    g = gens[n]
    # The generation in force at its start: the last acknowledged before it (with the margin),
    # provided the next one was not issued yet.
    k = max((i for i, (iss, ack, exp) in enumerate(g) if ack + args.margin <= r["t"]), default=None)
    nxt = g[k + 1][0] if k is not None and k + 1 < len(g) else end
    # Start times are truncated to ticks: the start lies in [t, t + 1 tick).
    if k is None or r["t"] + 1.0 / TICK > nxt:
        skipped += 1
        continue
    checked += 1
    exp = g[k][2]
    bad = []
    if exp.get("running") is False:
        bad.append("started while %s was stopped" % n)
    if r["level"] != exp["level"]:
        bad.append("BGWORKER_LOG_LEVEL %s, EffectiveLogLevel %s" % (r["level"], exp["level"]))
    if r["var"] != exp["var"]:
        bad.append("ADV_VAR %s, configured %s" % (r["var"], exp["var"]))
    if r["gone"] != (exp["gone"] or "UNSET"):
        bad.append("ADV_GONE %s, configured %s" % (r["gone"], exp["gone"]))
    if r["arg"] != "%s/%s" % (n, exp["arg"]):
        bad.append("argv %s, configured %s/%s" % (r["arg"], n, exp["arg"]))
    want_uid = 65534 if exp["user"] == "nobody" else 0
    if r["uid"] != want_uid:
        bad.append("uid %d, configured %s" % (r["uid"], exp["user"]))
    if n == "wd":
        if r["wpid"] != r["pid"]:
            bad.append("WATCHDOG_PID %s, its pid %s" % (r["wpid"], r["pid"]))
        if r["notify"] == "UNSET":
            bad.append("no NOTIFY_SOCKET")
    elif r["notify"] != "UNSET" or r["wpid"] != "UNSET":
        bad.append("NOTIFY_SOCKET %s WATCHDOG_PID %s without a watchdog" % (r["notify"], r["wpid"]))
    if bad:
        problems.append("%s pid %s started %.3f (generation %d acknowledged %.3f, next issued %.3f): %s" % (
            n, r["pid"], r["t"], k, g[k][1], nxt, "; ".join(bad)))
# Every watchdog record, whatever its generation.
for r in recs:
    if r["name"] == "wd" and r["wpid"] != r["pid"]:
        problems.append("wd pid %s: WATCHDOG_PID %s" % (r["pid"], r["wpid"]))
for t, n, live in overlaps:
    problems.append("two live sessions of %s at %.3f: %s" % (n, t, live))
rig.stop()
time.sleep(0.3)
left = tagged()
if left:
    problems.append("after the daemon's SIGTERM: %s" % left)
log("steps %s; %d process records, %d checked, %d in a change's window (not judged)" % (
    dict(counts), len(recs), checked, skipped))
with open(os.path.join(ROOT, "problems.txt"), "w") as f:
    f.write("".join(p + "\n" for p in problems))
log("RESULT: %d problems (all in %s/problems.txt)" % (len(problems), ROOT))
for p in problems[:40]:
    log("PROBLEM:", p)
if len(problems) > 40:
    log("... and %d more" % (len(problems) - 40))
sys.exit(1 if problems else 0)
