#!/usr/bin/env python3
# Reproducer candidate: a state call (Restart/Stop/Disable/Start/Enable) on a worker that a Reload
# removes (or changes) while the call waits for the worker to settle. Every call must get a reply
# (an error is fine) well before its 30 s timeout; NoReply means the waiter was lost.
# Usage: scripts/adversarial/run scripts/adversarial/restart_removed.py [--seed N] [--rounds N]
import argparse, os, random, sys, threading, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--rounds", type=int, default=20)
ap.add_argument("--root", default="/tmp/adv-removed")
args = ap.parse_args()
log("seed", args.seed)
rnd = random.Random(args.seed)
problems = []


def config(with_x1, gen=0):
    w = {"s0": toml_worker("s0", STEADY)}
    if with_x1:
        w["x1"] = toml_worker("x1", STUBBORN + ["g%d" % gen], stop_timeout=1.0, restart_delay=0.0)
    return w


rig = Rig(args.root, config(True))
shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
rig.start_bus(); rig.start_daemon()
m = rig.mgr()
stats = collections.Counter()
for r in range(args.rounds):
    rig.set_workers(config(True, r)); call(m, "Reload")
    call(m, "Enable", "x1"); call(m, "Start", "x1")
    wait_for("x1 running", lambda: rig.list().get("x1", {}).get("state") == "running", 10)
    meth = rnd.choice(["Restart", "Stop", "Disable", "Restart", "Restart"])
    change = rnd.choice(["remove", "change"])
    res = {}
    def caller():
        c = rig.conn(); mm = rig.mgr(c)
        t0 = time.monotonic(); res["out"] = call(mm, meth, "x1", timeout=30); res["dt"] = time.monotonic() - t0
    t = threading.Thread(target=caller); t.start()
    # the worker ignores SIGTERM: the call waits ~stop-timeout for it; reload in the middle
    wait_for("x1 stopping", lambda: rig.list().get("x1", {}).get("state") == "stopping", 5)
    time.sleep(rnd.uniform(0.0, 0.8))
    rig.set_workers(config(change == "change", r + 1000))
    rl = call(m, "Reload")
    t.join(40)
    stats[(meth, change, res.get("out"))] += 1
    log("round %d: %s x1, Reload (%s x1) -> %s; %s answered %s in %.2fs" % (r, meth, change, rl, meth, res.get("out"), res.get("dt", -1)))
    if res.get("out") == "org.freedesktop.DBus.Error.NoReply" or res.get("dt", 99) > 10:
        problems.append("round %d: %s x1 while a Reload %s x1: %s after %.1fs" % (r, meth, "removed" if change == "remove" else "changed", res.get("out"), res.get("dt", -1)))
log("replies:", dict(stats))
rig.stop()
log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
