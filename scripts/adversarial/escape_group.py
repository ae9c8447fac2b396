#!/usr/bin/env python3
# Reproducer (known gap, not fixed): a worker process that moves to a process group of its own
# with setpgid (job control: `bash -m`, `set -m`; here python's os.setpgid) stays in the worker's
# session but outlives Disable, Stop and a clean stop of the daemon: the running daemon signals the
# worker's process group only, while the record of process groups (after a SIGKILL of the daemon)
# kills the whole session. After Disable + Enable the worker has two sessions' worth of processes.
# Exits 1 while that is so. Usage: scripts/adversarial/run scripts/adversarial/escape_group.py
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ESC = [SH, "-c", "python3 -c 'import os; os.setpgid(0, 0); os.execv(\"/bin/sleep\", [\"sleep\", \"100001\"])' & exec sleep 100000"]
problems = []


def sessions():
    """Live processes of the worker: pid -> (comm, pgid, sid)."""
    out = {}
    for pid in tagged():
        try:
            st = open("/proc/%d/stat" % pid).read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if rest[0] != "Z":
            out[pid] = (st[st.index("(") + 1:st.rindex(")")], int(rest[2]), int(rest[3]))
    return out


rig = Rig("/tmp/adv-escape", {"esc": toml_worker("esc", ESC, stop_timeout=1.0)})
shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
rig.start_bus(); rig.start_daemon(); m = rig.mgr()
wait_for("esc running with its escaped child", lambda: rig.list()["esc"]["state"] == "running" and any(v[1] != v[2] for v in sessions().values()))
log("running:", rig.list()["esc"], sessions())
for method in ("Disable", "Enable", "Stop", "Start"):
    out = call(m, method, "esc")
    time.sleep(0.5)  # measurement window: what is left once the call has replied
    l = rig.list()["esc"]
    s = sessions()
    sids = sorted({v[2] for v in s.values()})
    log("%s -> %s: %s; processes %s" % (method, out, l, s))
    if len(sids) > 1 or (l["pid"] == 0 and s) or (l["pid"] and sids != [l["pid"]]):
        problems.append("after %s: esc %s %d, but processes of sessions %s live: %s" % (method, l["state"], l["pid"], sids, s))
rig.stop()
left = sessions()
if left:
    problems.append("after the daemon's SIGTERM: processes left %s" % left)
log("RESULT: %d problems" % len(problems))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
