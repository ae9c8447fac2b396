#!/usr/bin/env python3
# The respawn path's look for survivors (63d2483): at a worker's exit bgworkerd reads only the
# main thread's and the loop thread's `children` files, both to skip the /proc session scan and
# to find adopted orphans (it is a child subreaper). Every worker here crash-loops
# (restart-delay 0) and takes a flock on a file of its own in its main process (`flock -n`); every
# process it starts inherits the lock's fd. A survivor of one copy that still lives when the next
# copy starts holds the lock: the new copy records a collision (two copies at once). Kinds:
#   dbl:    a double fork whose grandchild calls setsid (an orphan of bgworkerd while the worker
#           runs), then the main crashes;
#   late:   a member (in the session) starts a setsid'd grandchild and exits on its own a random
#           0-30 ms after the main crashed: the grandchild is reparented while bgworkerd handles
#           the exit or respawns;
#   deep:   a chain of setsid'd processes 4 deep, each waiting on the next (each becomes our child
#           only when the one above it is killed);
#   spawn:  a setsid'd process that forks setsid'd orphans in a loop (new orphans reparented while
#           the runner kills the ones it found);
#   pgrp:   a process in a process group of its own (perl's setpgrp), same session;
#   plain:  a background `sleep` of the session (the group's SIGKILL).
# Copies of each kind crash at once (the daemon busy with many exits per loop iteration). At the end
# Stop of all and the daemon's SIGTERM: nothing of any worker may live.
# Usage: scripts/adversarial/run scripts/adversarial/respawn_orphans.py [--copies N] [--seconds S]
#        (exit 1 on a PROBLEM)
import os, sys, time, argparse
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--copies", type=int, default=3)
ap.add_argument("--seconds", type=float, default=30)
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
args = ap.parse_args()
log("seed", args.seed, "copies", args.copies, "seconds", args.seconds)

ROOT = "/tmp/adv-respawn-orphans"
REC = os.path.join(ROOT, "rec")
shutil.rmtree(ROOT, ignore_errors=True)
os.makedirs(REC)
# The prologue: the lock on fd 9 (inherited by everything the copy starts), a collision recorded,
# each start counted.
PRO = ('exec 9>%s/lock.$BGWORKER_NAME; if ! flock -n 9; then echo "$$" >> %s/collision.$BGWORKER_NAME; '
       'exit 99; fi; echo "$$" >> %s/start.$BGWORKER_NAME; ') % (REC, REC, REC)
# dash has no $RANDOM: a delay from the pid.
KINDS = {
    "dbl": "(setsid sleep 1000 &) ; sleep 0.01; exit 1",
    "late": "sh -c 'setsid sleep 1001 & sleep 0.0$(($$ % 3))' & sleep 0.01; exit 2",
    "deep": "setsid sh -c 'setsid sh -c \"setsid sh -c \\\"setsid sleep 1002\\\"\"' & sleep 0.02; exit 3",
    "spawn": "setsid sh -c 'while :; do (setsid sleep 1003 &); done' & sleep 0.02; exit 4",
    "pgrp": "perl -e 'setpgrp(0, 0); exec \"sleep\", \"1004\"' & sleep 0.01; exit 5",
    "plain": "sleep 1005 & sleep 0.01; exit 6",
}
workers = {}
for kind, body in KINDS.items():
    for i in range(args.copies):
        n = "%s%d" % (kind, i)
        workers[n] = toml_worker(n, [SH, "-c", PRO + body], restart_delay=0, start_limit_burst=0,
                                 stop_timeout=1.0)
rig = Rig(ROOT, workers)
rig.start_bus()
rig.start_daemon()
m = rig.mgr()
problems = []


def lines(prefix, name):
    try:
        return open(os.path.join(REC, "%s.%s" % (prefix, name))).read().split()
    except OSError:
        return []


end = time.monotonic() + args.seconds
while time.monotonic() < end:
    time.sleep(1)
    l = rig.list()
    starts = sum(len(lines("start", n)) for n in workers)
    coll = {n: len(lines("collision", n)) for n in workers if lines("collision", n)}
    log("starts %d, collisions %s, procs %d, daemon %s" % (
        starts, coll, len(tagged()), "alive" if rig.daemon.poll() is None else "DEAD"))
    if rig.daemon.poll() is not None:
        problems.append("the daemon died: %s" % rig.daemon.returncode)
        break
def threads(pid):
    """Each thread of `pid`: tid -> (comm, state, its children)."""
    out = {}
    for t in sorted(os.listdir("/proc/%d/task" % pid), key=int):
        try:
            st = open("/proc/%d/task/%s/stat" % (pid, t)).read()
            kids = open("/proc/%d/task/%s/children" % (pid, t)).read().split()
        except OSError:
            continue
        out[int(t)] = (st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2], len(kids))
    return out


log("the daemon's threads (tid: comm, state, children): %s" % threads(rig.daemon.pid))
for n in workers:
    call(m, "Stop", n)
listing = rig.wait_settled("all stopped", 60)
time.sleep(0.2)
left = {p: v for p, v in tagged().items() if v[4] != "Z"}
if left:
    problems.append("after Stop of every worker, processes live: %s" % sorted(left.items())[:20])
problems += proc_problems(listing)
rig.stop()
time.sleep(0.3)
left = {p: v for p, v in tagged().items() if v[4] != "Z"}
if left:
    problems.append("after the daemon's SIGTERM: %s" % sorted(left.items())[:20])
for n in workers:
    c = lines("collision", n)
    if c:
        problems.append("%s: %d copies found the lock held by a survivor of the previous copy (of %d starts)"
                        % (n, len(c), len(lines("start", n))))
log("starts: %s" % {k: sum(len(lines("start", n)) for n in workers if n.startswith(k)) for k in KINDS})
log("RESULT: %d problems" % len(problems))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
