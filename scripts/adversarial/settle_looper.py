#!/usr/bin/env python3
# Reproducer candidate: Restart/Start/Enable of a worker that exits at once with restart-delay = 0
# and start-limit-burst = 0 (it restarts for ever, never waiting in backoff). The call replies
# "once the worker is settled" (Supervisor.applyAndWaitUntilSettled); if the worker passes through
# `running` only between two checks (its exit handled before the waiters are looked at), the caller
# waits until its timeout. Every call here must reply within --limit seconds.
# Usage: scripts/adversarial/run scripts/adversarial/settle_looper.py [--calls N] [--limit S] [--loopers N]
import argparse, os, sys, threading, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--calls", type=int, default=60)
ap.add_argument("--limit", type=float, default=5.0)
ap.add_argument("--loopers", type=int, default=4)
ap.add_argument("--root", default="/tmp/adv-settle")
args = ap.parse_args()
problems = []
w = {"q%d" % i: toml_worker("q%d" % i, ["/bin/true"], restart_delay=0.0, start_limit_burst=0) for i in range(args.loopers)}
rig = Rig(args.root, w, log_level="warning")
shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
rig.start_bus(); rig.start_daemon()
lat = []
lock = threading.Lock()
def worker(i):
    c = rig.conn(); m = rig.mgr(c)
    for k in range(args.calls):
        meth = ["Restart", "Start", "Enable"][k % 3]
        t0 = time.monotonic(); out = call(m, meth, "q%d" % i, timeout=args.limit); dt = time.monotonic() - t0
        with lock:
            lat.append((dt, meth, out))
ts = [threading.Thread(target=worker, args=(i,)) for i in range(args.loopers)]
for t in ts: t.start()
for t in ts: t.join()
slow = [x for x in lat if x[2] != "ok"]
lat.sort()
log("%d calls on restart-delay-0 loopers: median %.3fs, max %.3fs, %d without a reply within %.0fs: %s" % (
    len(lat), lat[len(lat) // 2][0], lat[-1][0], len(slow), args.limit, collections.Counter((m, o) for _, m, o in slow)))
if slow:
    problems.append("%d of %d calls on a restart-delay-0 crash-looper got no reply within %.0f s" % (len(slow), len(lat), args.limit))
if rig.daemon.poll() is not None:
    problems.append("daemon died")
rig.stop()
log("RESULT: %d problems" % len(problems))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
