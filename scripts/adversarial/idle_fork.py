#!/usr/bin/env python3
# Scenarios 5 and 6: an idle daemon wakes 0 times (context switches of every thread over 10 s);
# a worker that forks a child and exits (no children pile up); SIGTERM-ignoring workers and stop
# timeouts (Stop replies after about stop-timeout, nothing left).
# Usage: scripts/adversarial/run scripts/adversarial/idle_fork.py [--seed N] [--idle SECONDS]
import argparse, os, random, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--idle", type=float, default=10.0)
ap.add_argument("--root", default="/tmp/adv-idle")
args = ap.parse_args()
log("seed", args.seed)
problems = []


switches = thread_switches


def main():
    w = {n: toml_worker(n, STEADY) for n in ("s0", "s1")}
    w["stub"] = toml_worker("stub", STUBBORN, stop_timeout=1.5)
    rig = Rig(args.root, w)
    shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
    rig.start_bus(); rig.start_daemon()
    m = rig.mgr()
    wait_for("all running", lambda: all(v["state"] == "running" for v in rig.list().values()))
    # --- 5: idle -------------------------------------------------------------------------
    time.sleep(1.0)  # let the start's own work drain (not synchronisation: a measurement window)
    a = switches(rig.daemon.pid)
    time.sleep(args.idle)
    b = switches(rig.daemon.pid)
    woke = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}
    log("idle %.0fs: threads %d, context switches by thread: %s" % (args.idle, len(b), woke or "none"))
    if woke:
        problems.append("idle daemon woke: %s" % woke)
    # --- 6: stubborn stop ------------------------------------------------------------------
    for meth in ("Stop", "Disable", "Restart"):
        if meth == "Restart":
            call(m, "Enable", "stub")
        pid = rig.list()["stub"]["pid"]
        t0 = time.monotonic()
        out = call(m, meth, "stub")
        dt = time.monotonic() - t0
        l = rig.list()["stub"]
        gone = not any(v[0] == "stub" and p == pid for p, v in tagged().items() if v[4] != "Z")
        log("%s stub (pid %d, stop-timeout 1.5): %s in %.2fs, now %s pid %d, old gone %s" % (meth, pid, out, dt, l["state"], l["pid"], gone))
        if out != "ok" or not gone or dt < 1.4 or dt > 5:
            problems.append("%s of a SIGTERM-ignoring worker: %s in %.2fs, old pid gone %s" % (meth, out, dt, gone))
        if meth == "Stop":
            call(m, "Start", "stub")
    # --- 6: forker -------------------------------------------------------------------------
    rig.set_workers(dict(w, fork=toml_worker("fork", FORKER, restart_delay=0.0, start_limit_burst=0),
                         escape=toml_worker("escape", [SH, "-c", "setsid sleep 100000 & exit 0"], restart_delay=0.5, start_limit_burst=0)))
    print(call(m, "Reload"))
    seen = set(); maxprocs = 0
    end = time.monotonic() + 5
    while time.monotonic() < end:
        t = {p: v for p, v in tagged().items() if v[0] == "fork" and v[4] != "Z"}
        maxprocs = max(maxprocs, len(t))
        seen.update(v[1] for v in t.values())
        time.sleep(0.01)
    log("forker: %d process groups seen in 5 s, at most %d live processes at once" % (len(seen), maxprocs))
    if maxprocs > 2:
        problems.append("forker: %d live processes at once" % maxprocs)
    esc = [p for p, v in tagged().items() if v[0] == "escape"]
    log("escape (setsid child, documented as not followed): %d escaped processes after 5 s" % len(esc))
    call(m, "Disable", "fork"); call(m, "Disable", "escape")
    left = [p for p, v in tagged().items() if v[0] == "fork" and v[4] != "Z"]
    if left:
        problems.append("forker disabled but processes left: %s" % left)
    rig.daemon.send_signal(signal.SIGTERM)
    t0 = time.monotonic(); st = rig.daemon.wait(30)
    log("SIGTERM with a SIGTERM-ignoring worker: exit %s in %.2fs" % (st, time.monotonic() - t0))
    left = {p: v for p, v in tagged().items() if v[0] != "escape"}
    if left:
        problems.append("after SIGTERM processes left: %s" % left)
    rig.bus.terminate(); rig.bus.wait()


main()
log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
