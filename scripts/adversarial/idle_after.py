#!/usr/bin/env python3
# Scenario 5 after a storm: chaos (Stop/Start/Restart/Enable/Disable from several clients, Reloads,
# crash-loopers in backoff, SIGTERM-ignoring workers being stopped), then everything quiet: the
# daemon must wake 0 times (context switches of all its threads over --idle seconds). A timer left
# armed by the storm, or a poll, shows up here.
# Usage: scripts/adversarial/run scripts/adversarial/idle_after.py [--seed N] [--idle S] [--calls N]
import argparse, multiprocessing as mp, os, random, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--idle", type=float, default=10.0)
ap.add_argument("--calls", type=int, default=200)
ap.add_argument("--root", default="/tmp/adv-idle-after")
args = ap.parse_args()
log("seed", args.seed)
problems = []
NAMES = ["s0", "s1", "stub", "cdef", "c0b"]


def client(addr, seed, q):
    r = random.Random(seed)
    import dbus
    c = dbus.bus.BusConnection(addr)
    m = dbus.Interface(c.get_object(NAME, MGR, introspect=False), NAME)
    n = collections.Counter()
    for _ in range(args.calls):
        n[call(m, r.choice(["Enable", "Disable", "Stop", "Start", "Restart"]), r.choice(NAMES))] += 1
    q.put(n)


switches = thread_switches


def config(gen):
    return {"s0": toml_worker("s0", STEADY, stop_timeout=1.0),
            "s1": toml_worker("s1", [SH, "-c", "exec sleep %d" % (100000 + gen)]),
            "stub": toml_worker("stub", STUBBORN, stop_timeout=0.4),
            "cdef": toml_worker("cdef", CRASH_FAST, restart_delay=0.3),
            "c0b": toml_worker("c0b", CRASH_NOW, restart_delay=0.0, start_limit_burst=0)}


rig = Rig(args.root, config(0))
shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
rig.start_bus(); rig.start_daemon()
m = rig.mgr()
q = mp.Queue()
ps = [mp.Process(target=client, args=(rig.address, args.seed * 10 + i, q)) for i in range(4)]
for p in ps: p.start()
gen = 0
rnd = random.Random(args.seed)
while any(p.is_alive() for p in ps):
    gen += 1
    rig.set_workers(config(gen)); call(m, "Reload")
    time.sleep(rnd.uniform(0.05, 0.3))
tot = collections.Counter()
for p in ps: tot.update(q.get()); p.join()
log("storm: %s, %d reloads" % (dict(tot), gen))
# quiet: no crash-loopers, everything settled
for n in ("cdef", "c0b"):
    call(m, "Disable", n)
for n in ("s0", "s1", "stub"):
    call(m, "Enable", n); call(m, "Start", n)
l = rig.wait_settled("quiet", 30)
log("quiet:", {k: v["state"] for k, v in l.items()})
time.sleep(1.0)  # measurement window starts after the last reply's own work
a = switches(rig.daemon.pid)
time.sleep(args.idle)
b = switches(rig.daemon.pid)
woke = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}
log("idle %.0fs after the storm: %d threads, context switches: %s" % (args.idle, len(b), woke or "none"))
if woke:
    problems.append("idle daemon woke after a storm: %s" % woke)
rig.stop()
log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
