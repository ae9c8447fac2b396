#!/usr/bin/env python3
# Operator mistakes: a second bgworkerd started beside a live one (same runtime directory and bus;
# then another runtime directory, same bus and state), and the state directory removed.
# The live daemon and its workers must be untouched (same pids), the second one must go away, no
# worker may run twice.
# Usage: scripts/adversarial/run scripts/adversarial/second.py
import os, sys, time, subprocess
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

problems = []
w = {"s0": toml_worker("s0", STEADY), "fork": toml_worker("fork", [SH, "-c", "sleep 100000 & exec sleep 100000"])}
rig = Rig("/tmp/adv-second", w)
shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
rig.start_bus(); rig.start_daemon()
m = rig.mgr()
wait_for("running", lambda: all(v["state"] == "running" for v in rig.list().values()))
before = {p: v for p, v in tagged().items()}
for label, runtime in (("same runtime directory", os.path.join(rig.root, "run")),
                       ("own runtime directory", os.path.join(rig.root, "run2"))):
    os.makedirs(runtime, exist_ok=True)
    env = dict(os.environ, RUNTIME_DIRECTORY=runtime)
    second = subprocess.Popen([os.path.join(BIN, "bgworkerd"), "--bus", rig.address, "--config", rig.conf,
                               "--runner", "process"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out, _ = second.communicate(timeout=20)
        st = second.returncode
    except subprocess.TimeoutExpired:
        st = "still running after 20 s"
        second.send_signal(signal.SIGTERM); out, _ = second.communicate(timeout=30)
    now = {p: v for p, v in tagged().items()}
    groups = {}
    for p, v in now.items():
        if v[4] != "Z": groups.setdefault(v[0], set()).add(v[1])
    log("second daemon (%s): status %s; first alive %s; output tail: %s" % (
        label, st, rig.daemon.poll() is None, out.decode(errors="replace").strip().splitlines()[-3:]))
    if rig.daemon.poll() is not None:
        problems.append("%s: the first daemon died: %s" % (label, rig.daemon.returncode))
    if set(before) != set(now):
        problems.append("%s: the first daemon's worker processes changed: before %s after %s" % (label, before, now))
    if any(len(g) > 1 for g in groups.values()):
        problems.append("%s: two groups of one worker: %s" % (label, groups))
    if st == 0:
        problems.append("%s: the second daemon exited 0" % label)
    l = rig.list()
    if any(v["state"] != "running" for v in l.values()):
        problems.append("%s: the first daemon's listing changed: %s" % (label, l))
# the state directory removed under a live daemon
shutil.rmtree(rig.state)
out = call(m, "Disable", "s0")
l = rig.list()
log("state directory removed: Disable -> %s; s0 %s; state dir exists again: %s" % (out, l["s0"], os.path.isdir(rig.state)))
if out not in ("ok", "org.example.BgWorker.Error.StateNotSaved"):
    problems.append("Disable with the state directory gone answered %s" % out)
if out != "ok" and l["s0"]["state"] != "running":
    problems.append("Disable failed (%s) but s0 changed: %s" % (out, l["s0"]))
rig.stop()
log("RESULT: %d problems" % len(problems))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
