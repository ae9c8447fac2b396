#!/usr/bin/env python3
# A worker process that leaves the worker's session with setsid (a daemonizer) must not outlive
# its worker: after Disable, Stop, a crash of the worker's main process and the daemon's SIGTERM
# nothing of the old copy may live, and a restart must never run beside an old copy. Three kinds:
#   sid:  `setsid sh -c 'exec sleep 100002' &` (its parent, the worker, lives on);
#   dbl:  a double fork whose intermediate exits at once, the grandchild calls setsid (orphaned
#         while the worker runs: reparented to bgworkerd, a child subreaper);
#   blip: the same, but the orphan exits on its own soon after: it must not stay a zombie;
#   chain: a setsid'd process that starts another setsid'd one (whose parent lives until killed:
#          it becomes bgworkerd's child only then, and must be found before the exit is reported).
# Before the fix (2026-12-06, main at 5359560): the escaped processes survived every step.
# Usage: scripts/adversarial/run scripts/adversarial/escape_session.py    (exit 1 on a PROBLEM)
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

DOUBLE = ("python3 -c 'import os, sys\n"
          "if os.fork(): os._exit(0)\n"
          "os.setsid(); os.execv(\"/bin/sleep\", [\"sleep\", sys.argv[1]])' %s; exec sleep 100000")
WORKERS = {
    "sid": [SH, "-c", "setsid sh -c 'exec sleep 100002' & exec sleep 100000"],
    "dbl": [SH, "-c", DOUBLE % "100003"],
    "blip": [SH, "-c", DOUBLE % "0.2"],
    "chain": [SH, "-c", "setsid sh -c 'setsid sleep 100004 & exec sleep 100005' & exec sleep 100000"],
}
ESCAPED = {"sid": "100002", "dbl": "100003", "chain": "100004"}
CHAIN_MIDDLE = "100005"
BLIP = "0.2"
problems = []


def escaped(name, argument=None):
    """pid -> (state, sid, ppid) of the live escaped processes of worker `name` (not zombies)."""
    out = {}
    for pid, (worker, pgid, ppid, comm, st) in tagged().items():
        if worker != name or st == "Z":
            continue
        try:
            argv = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", (argument or ESCAPED[name]).encode()]:
            out[pid] = (st, os.getsid(pid) if os.path.exists("/proc/%d" % pid) else None, ppid)
    return out


def zombies():
    """Zombies of the daemon (the PID 1 of this namespace, the script, reaps none: not counted)."""
    return {p: v for p, v in tagged().items() if v[4] == "Z" and v[2] == rig.daemon.pid}


def check(step, running):
    """After `step`: none of the escaped processes of a stopped worker live, one of a running one."""
    time.sleep(0.5)  # measurement window: what is left once the call has replied
    listing = rig.list()
    for name in ESCAPED:
        e = escaped(name)
        want = 1 if running else 0
        log("%s: %s %s escaped %s" % (step, name, listing[name], e))
        if len(e) > want:
            problems.append("after %s: %s %s %d, but %d escaped processes live: %s" % (
                step, name, listing[name]["state"], listing[name]["pid"], len(e), e))
    middle = escaped("chain", CHAIN_MIDDLE)
    if len(middle) > (1 if running else 0):
        problems.append("after %s: chain's middle processes live: %s" % (step, middle))
    z = zombies()
    if z:
        problems.append("after %s: zombies %s" % (step, z))


rig = Rig("/tmp/adv-escape-session", {n: toml_worker(n, a, stop_timeout=1.0) for n, a in WORKERS.items()})
shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
rig.start_bus(); rig.start_daemon(); m = rig.mgr()
wait_for("the escaped processes", lambda: all(len(escaped(n)) == 1 for n in ESCAPED))
daemon_pid = rig.daemon.pid
for name in ESCAPED:
    for pid, (st, sid, ppid) in escaped(name).items():
        log("%s escaped %d: session %s, parent %d (daemon %d)" % (name, pid, sid, ppid, daemon_pid))
try:
    wait_for("blip's orphan exited and reaped", lambda: not escaped("blip", BLIP) and not zombies(), 10)
except TimeoutError as e:
    problems.append(str(e) + ": zombies %s" % zombies())
check("start", True)
for method in ("Disable", "Enable", "Stop", "Start", "Restart"):
    out = "/".join(call(m, method, n) for n in ESCAPED)
    log("%s -> %s" % (method, out))
    if method in ("Enable", "Start", "Restart"):
        wait_for("escaped again after %s" % method, lambda: all(len(escaped(n)) >= 1 for n in ESCAPED))
    check(method, method in ("Enable", "Start", "Restart"))
for round in range(3):
    before = {n: rig.list()[n]["pid"] for n in ESCAPED}
    for name, pid in before.items():
        os.kill(pid, signal.SIGKILL)
    wait_for("restarted after the crash", lambda: all(rig.list()[n]["pid"] not in (0, before[n]) and
                                                      rig.list()[n]["state"] == "running" for n in ESCAPED))
    wait_for("escaped again after the crash", lambda: all(len(escaped(n)) >= 1 for n in ESCAPED))
    check("crash %d" % round, True)
rig.stop()
time.sleep(0.5)
left = {n: escaped(n) for n in ESCAPED}
if any(left.values()):
    problems.append("after the daemon's SIGTERM: escaped processes left %s" % left)
log("RESULT: %d problems" % len(problems))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
