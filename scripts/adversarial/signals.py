#!/usr/bin/env python3
# Scenario 4: SIGTERM while Enable/Disable (a state write) is in flight: the daemon exits, nothing
# is left running, the replied intents hold after a restart; and SIGHUP floods mixed with Reload
# and state changes: the daemon stays up and answers.
# Usage: scripts/adversarial/run scripts/adversarial/signals.py [--seed N] [--rounds N] [--hups N]
import argparse, multiprocessing as mp, os, random, sys, time, collections
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--rounds", type=int, default=15)
ap.add_argument("--hups", type=int, default=500)
ap.add_argument("--root", default="/tmp/adv-signals")
args = ap.parse_args()
log("seed", args.seed)
rnd = random.Random(args.seed)
problems = []
NAMES = ["s%d" % i for i in range(4)]


def toggler(addr, seed, names, q):
    r = random.Random(seed)
    import dbus
    c = dbus.bus.BusConnection(addr)
    m = dbus.Interface(c.get_object(NAME, MGR, introspect=False), NAME)
    replied, inflight, n = {}, {}, 0
    while True:
        nm = r.choice(names); want = r.random() < 0.5
        inflight = {nm: want}
        out = call(m, "Enable" if want else "Disable", nm, timeout=30)
        if out != "ok":
            break
        replied[nm] = want; inflight = {}; n += 1
    q.put((replied, inflight, n, out))


def main():
    w = {n: toml_worker(n, STEADY, stop_timeout=1.0) for n in NAMES}
    w["stub"] = toml_worker("stub", STUBBORN, stop_timeout=0.5)
    w["c0a"] = toml_worker("c0a", CRASH_FAST, restart_delay=0.0, start_limit_burst=0)
    rig = Rig(args.root, w)
    shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
    rig.start_bus(); rig.start_daemon()
    total_ok = 0
    for r in range(args.rounds):
        wait_for("settled", lambda: rig.settled(), 30)
        q = mp.Queue()
        ps = [mp.Process(target=toggler, args=(rig.address, args.seed * 100 + r * 10 + i, NAMES[i::2], q)) for i in range(2)]
        for p in ps: p.start()
        time.sleep(rnd.uniform(0.02, 0.8))
        t0 = time.monotonic()
        rig.daemon.send_signal(signal.SIGTERM)
        try:
            st = rig.daemon.wait(30)
        except subprocess.TimeoutExpired:
            problems.append("round %d: daemon did not exit 30 s after SIGTERM" % r)
            rig.daemon.kill(); st = rig.daemon.wait()
        dt = time.monotonic() - t0
        res = [q.get(timeout=60) for _ in ps]
        for p in ps: p.join()
        left = tagged()
        if left:
            problems.append("round %d: after SIGTERM exit (status %s) processes left: %s" % (r, st, left))
        if st != 0:
            problems.append("round %d: daemon exited with status %s after SIGTERM" % (r, st))
        rig.start_daemon()
        l = rig.list()
        for replied, inflight, n, last in res:
            total_ok += n
            for nm, want in replied.items():
                if nm not in inflight and l[nm]["enabled"] != want:
                    problems.append("round %d: %s Enabled=%s, last ok reply said %s" % (r, nm, l[nm]["enabled"], want))
        log("round %d: SIGTERM exit %s in %.2fs, last replies %s" % (r, st, dt, [x[3] for x in res]))
    log("SIGTERM rounds: %d, ok Enable/Disable replies: %d" % (args.rounds, total_ok))
    # SIGHUP flood with Reloads and state calls
    m = rig.mgr()
    q = mp.Queue()
    ps = [mp.Process(target=toggler, args=(rig.address, args.seed + 7, NAMES, q))]
    for p in ps: p.start()
    reloads = collections.Counter()
    for i in range(args.hups):
        rig.daemon.send_signal(signal.SIGHUP)
        if i % 10 == 0:
            reloads[call(m, "Reload")] += 1
    reloads[call(m, "Reload")] += 1
    l = wait_for("settled after SIGHUP flood", lambda: rig.settled(), 60)
    if rig.daemon.poll() is not None:
        problems.append("daemon died in the SIGHUP flood: %s" % rig.daemon.returncode)
    log("SIGHUP flood: %d signals, Reload replies %s" % (args.hups, dict(reloads)))
    rig.daemon.send_signal(signal.SIGTERM); rig.daemon.wait(30)
    res = q.get(timeout=60); ps[0].join()
    log("toggler during SIGHUP flood: %d ok, last %s" % (res[2], res[3]))
    rig.bus.terminate(); rig.bus.wait()


main()
log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
