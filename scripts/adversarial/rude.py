#!/usr/bin/env python3
# Rude clients: state calls on the worker objects and the manager, LogLevel sets (valid and not),
# GetAll/Introspect/Logs, wrong argument types, with random short timeouts (the caller gives up
# before the reply), and clients that send a burst of calls and exit without waiting. Workers
# crash-loop meanwhile. Then: the daemon alive, the bus agrees with /proc, the daemon still
# answers within a second.
# Usage: scripts/adversarial/run scripts/adversarial/rude.py [--seed N] [--clients N] [--calls N]
import argparse, multiprocessing as mp, os, random, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--clients", type=int, default=8)
ap.add_argument("--calls", type=int, default=300)
ap.add_argument("--root", default="/tmp/adv-rude")
args = ap.parse_args()
log("seed", args.seed)
problems = []
NAMES = ["s0", "s1", "stub", "c0a", "c0b"]
LABEL = {n: "/org/example/BgWorker/worker/" + ("_%02x" % ord(n[0]) + n[1:] if n[0].isdigit() else n) for n in NAMES}
W = "org.example.BgWorker.Worker"
P = "org.freedesktop.DBus.Properties"


def client(addr, seed, q):
    r = random.Random(seed)
    import dbus
    c = dbus.bus.BusConnection(addr)
    m = dbus.Interface(c.get_object(NAME, MGR, introspect=False), NAME)
    n = collections.Counter()
    rude_exit = r.random() < 0.3
    for i in range(args.calls):
        nm = r.choice(NAMES)
        o = c.get_object(NAME, LABEL[nm], introspect=False)
        k = r.randrange(9)
        t = r.choice([0.001, 0.01, 0.1, 1.0, 30.0])
        try:
            if rude_exit and i > args.calls // 2:
                # fire and forget a burst, then exit with the replies pending
                for _ in range(20):
                    c.call_async(NAME, LABEL[nm], W, r.choice(["Stop", "Start", "Restart", "Disable", "Enable"]), "", (), None, None)
                q.put(n); q.close(); q.join_thread(); os._exit(0)
            if k == 0:
                getattr(m, r.choice(["Enable", "Disable", "Stop", "Start", "Restart"]))(nm, timeout=t)
            elif k == 1:
                o.get_dbus_method(r.choice(["Enable", "Disable", "Stop", "Start", "Restart"]), W)(timeout=t)
            elif k == 2:
                o.Set(W, "LogLevel", r.choice(["debug", "", "bogus", "trace"]), dbus_interface=P, timeout=t)
            elif k == 3:
                c.get_object(NAME, MGR, introspect=False).Set(NAME, "LogLevel", r.choice(["info", "debug", "nope"]), dbus_interface=P, timeout=t)
            elif k == 4:
                o.GetAll(W, dbus_interface=P, timeout=t)
            elif k == 5:
                m.Logs(nm, dbus.UInt32(r.choice([0, 1, 1000, 2**32 - 1])), timeout=t)
            elif k == 6:
                c.get_object(NAME, MGR, introspect=False).Introspect(dbus_interface="org.freedesktop.DBus.Introspectable", timeout=t)
            elif k == 7:
                m.Enable(dbus.UInt32(3), timeout=t)  # wrong type
            else:
                m.Enable(r.choice(["", "x" * 300, "../etc", "s0\n", "nope"]), timeout=t)
            n["ok"] += 1
        except dbus.DBusException as e:
            n[e.get_dbus_name()] += 1
    q.put(n)


w = {"s0": toml_worker("s0", STEADY), "s1": toml_worker("s1", STEADY),
     "stub": toml_worker("stub", STUBBORN, stop_timeout=0.3),
     "c0a": toml_worker("c0a", CRASH_FAST, restart_delay=0.0, start_limit_burst=0),
     "c0b": toml_worker("c0b", CRASH_NOW, restart_delay=0.0, start_limit_burst=0)}
rig = Rig(args.root, w)
shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
rig.start_bus(); rig.start_daemon()
q = mp.Queue()
ps = [mp.Process(target=client, args=(rig.address, args.seed * 100 + i, q)) for i in range(args.clients)]
t0 = time.monotonic()
for p in ps: p.start()
tot = collections.Counter()
for p in ps: tot.update(q.get(timeout=120)); p.join()
log("%d rude clients in %.1fs: %s" % (args.clients, time.monotonic() - t0, dict(tot)))
if rig.daemon.poll() is not None:
    problems.append("daemon died: %s" % rig.daemon.returncode)
else:
    m = rig.mgr()
    t0 = time.monotonic(); rig.list(); dt = time.monotonic() - t0
    log("ListWorkers after: %.3fs" % dt)
    for n in NAMES:
        call(m, "Enable", n); call(m, "Start", n)
    call(m, "Disable", "c0a"); call(m, "Disable", "c0b")
    l = rig.wait_settled("settled", 30)
    probs = []
    for _ in range(50):
        probs = proc_problems(rig.list())
        if not probs: break
        time.sleep(0.1)
    log("final:", {k: v["state"] for k, v in l.items()})
    problems += probs
    bad = {k: v for k, v in tot.items() if k in ("org.freedesktop.DBus.Error.Failed",)}
    if bad:
        problems.append("generic Failed errors: %s" % bad)
    rig.stop()
log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
