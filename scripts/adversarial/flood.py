#!/usr/bin/env python3
# Scenarios 1 and 2: concurrent Enable/Disable/Stop/Start/Restart floods from many clients while
# workers crash-loop and Reloads change the configuration; then SIGKILL rounds: intents persisted
# as replied, nothing orphaned, no duplicate.
# Usage: scripts/adversarial/run scripts/adversarial/flood.py [--seed N] [--calls N] [--clients N] [--kills N]
import argparse, multiprocessing as mp, os, random, signal, sys, time, collections
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--calls", type=int, default=150)
ap.add_argument("--clients", type=int, default=6)
ap.add_argument("--kills", type=int, default=10)
ap.add_argument("--root", default="/tmp/adv-flood")
args = ap.parse_args()
log("seed", args.seed)
rnd = random.Random(args.seed)

STEADY_N = ["s%d" % i for i in range(6)]
CRASH0 = ["c0a", "c0b"]


def config(gen):
    w = {}
    for n in STEADY_N:
        w[n] = toml_worker(n, STEADY, stop_timeout=2.0)
    w["c0a"] = toml_worker("c0a", CRASH_FAST, restart_delay=0.0, start_limit_burst=0)
    w["c0b"] = toml_worker("c0b", CRASH_NOW, restart_delay=0.0, start_limit_burst=0)
    w["c0f"] = toml_worker("c0f", CRASH_NOW, restart_delay=0.0)           # goes failed
    w["cdef"] = toml_worker("cdef", CRASH_FAST)                            # default delay
    w["fork"] = toml_worker("fork", FORKER, restart_delay=0.0, start_limit_burst=0)
    w["stub"] = toml_worker("stub", STUBBORN, stop_timeout=0.3)
    if gen is not None:
        # Reload changes: s0's definition changes, x1 comes and goes, s5's configured enabled flips.
        w["s0"] = toml_worker("s0", [SH, "-c", "exec sleep %d" % (100000 + gen)], stop_timeout=2.0)
        if gen % 2:
            w["x1"] = toml_worker("x1", STEADY)
        w["s5"] = toml_worker("s5", STEADY, enabled=bool(gen % 3))
    return w


METHODS = ["Enable", "Disable", "Stop", "Start", "Restart"]


def chaos_client(addr, seed, calls, names, q):
    r = random.Random(seed)
    import dbus
    c = dbus.bus.BusConnection(addr)
    m = dbus.Interface(c.get_object(NAME, MGR, introspect=False), NAME)
    res = collections.Counter()
    for _ in range(calls):
        meth = r.choice(METHODS)
        n = r.choice(names)
        t0 = time.monotonic()
        out = call(m, meth, n, timeout=60)
        dt = time.monotonic() - t0
        res[(meth, out)] += 1
        if dt > 10:
            res[("slow>10s", meth)] += 1
    q.put(res)


def intent_client(addr, seed, names, q):
    """Sequential Enable/Disable on its own workers; reports the last replied intent and any in flight."""
    r = random.Random(seed)
    import dbus
    c = dbus.bus.BusConnection(addr)
    m = dbus.Interface(c.get_object(NAME, MGR, introspect=False), NAME)
    replied, inflight, n_ok = {}, {}, 0
    while True:
        n = r.choice(names)
        want = r.random() < 0.5
        inflight = {n: want}
        out = call(m, "Enable" if want else "Disable", n, timeout=30)
        if out == "ok":
            replied[n] = want
            n_ok += 1
            inflight = {}
        else:
            break
    q.put((replied, inflight, n_ok, out))


def check_proc(rig, strict_names, label):
    """Bus vs /proc for the steady workers (crash-loopers change under our feet)."""
    for attempt in range(50):
        l = rig.list()
        probs = proc_problems({k: v for k, v in l.items() if k in strict_names})
        probs += [p for p in proc_problems(l, allow_transient=True)]
        if not probs:
            return []
        time.sleep(0.1)
    log("PROBLEM", label, probs)
    return probs


def main():
    problems = []
    rig = Rig(args.root, config(None))
    shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
    rig.start_bus()
    rig.start_daemon()
    m = rig.mgr()
    wait_for("steady workers run", lambda: all(rig.list()[n]["state"] == "running" for n in STEADY_N))
    # --- scenario 1: chaos ---------------------------------------------------------------
    names = list(config(1).keys())
    q = mp.Queue()
    ps = [mp.Process(target=chaos_client, args=(rig.address, args.seed * 100 + i, args.calls, names, q))
          for i in range(args.clients)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    reloads = collections.Counter()
    gen = 0
    while any(p.is_alive() for p in ps):
        gen += 1
        rig.set_workers(config(gen))
        out = call(m, "Reload", timeout=60)
        reloads[out] += 1
        if rnd.random() < 0.3:
            rig.daemon.send_signal(signal.SIGHUP)
            reloads["SIGHUP"] += 1
        if rig.daemon.poll() is not None:
            problems.append("daemon died during chaos: status %s" % rig.daemon.returncode)
            break
        time.sleep(rnd.uniform(0.05, 0.3))
    total = collections.Counter()
    for p in ps:
        total.update(q.get(timeout=600))
        p.join()
    log("chaos: %d clients x %d calls in %.1fs, reloads %s" % (args.clients, args.calls, time.monotonic() - t0, dict(reloads)))
    for k, v in sorted(total.items(), key=str):
        log("   ", k, v)
    odd = {k: v for k, v in total.items() if k[1] not in ("ok", "org.example.BgWorker.Error.Disabled")
           and not (k[1] == "org.example.BgWorker.Error.NoSuchWorker")}
    if odd:
        problems.append("unexpected replies: %s" % odd)
    if rig.daemon.poll() is not None:
        problems.append("daemon died: %s" % rig.daemon.returncode)
        return problems
    # Bring all to a known configuration and check.
    rig.set_workers(config(None))
    call(m, "Reload")
    final = wait_for("settled after chaos", lambda: rig.settled(), 30)
    log("after chaos:", {k: (v["state"], v["enabled"]) for k, v in final.items()})
    problems += check_proc(rig, STEADY_N + ["stub"], "after chaos")
    # The intents survive a daemon restart (SIGTERM).
    before = {k: v["enabled"] for k, v in rig.list().items()}
    rig.daemon.send_signal(signal.SIGTERM)
    rig.daemon.wait(60)
    left = tagged()
    if left:
        problems.append("after SIGTERM, processes left: %s" % left)
    rig.start_daemon()
    m = rig.mgr()
    after = {k: v["enabled"] for k, v in rig.list().items()}
    if before != after:
        problems.append("Enabled differs across a SIGTERM restart: before %s after %s" % (before, after))
    # --- scenario 2: SIGKILL rounds ------------------------------------------------------
    respawns = 0
    for rnd_i in range(args.kills):
        q = mp.Queue()
        groups = [STEADY_N[i::3] for i in range(3)] + [["stub"], ["c0a", "fork"]]
        ps = [mp.Process(target=intent_client, args=(rig.address, args.seed * 1000 + rnd_i * 10 + i, g, q))
              for i, g in enumerate(groups)]
        for p in ps:
            p.start()
        # kill at a random point
        time.sleep(rnd.uniform(0.05, 1.5))
        pid = rig.daemon.pid
        rig.daemon.kill()
        rig.daemon.wait()
        results = [q.get(timeout=60) for _ in ps]
        for p in ps:
            p.join()
        # nothing orphaned: every worker process dies with the daemon
        try:
            wait_for("workers gone after SIGKILL", lambda: not tagged(), 10)
        except TimeoutError:
            problems.append("round %d: after SIGKILL of %d, processes left: %s" % (rnd_i, pid, tagged()))
        rig.start_daemon()
        m = rig.mgr()
        l = wait_for("settled after restart", lambda: rig.settled(), 30)
        oks = 0
        for replied, inflight, n_ok, last in results:
            oks += n_ok
            for n, want in replied.items():
                got = l[n]["enabled"]
                if n in inflight:
                    continue  # either value is right for a call in flight
                if got != want:
                    problems.append("round %d: %s Enabled=%s after restart but %s was replied ok"
                                    % (rnd_i, n, got, "Enable" if want else "Disable"))
        problems += check_proc(rig, STEADY_N + ["stub"], "round %d" % rnd_i)
        log("kill round %d: %d ok replies before SIGKILL, states %s" % (
            rnd_i, oks, {k: v["state"][:4] + ("+" if v["enabled"] else "-") for k, v in l.items()}))
    log("daemon starts:", rig.starts)
    rig.stop()
    left = tagged()
    if left:
        problems.append("after the final SIGTERM, processes left: %s" % left)
    return problems


if __name__ == "__main__":
    probs = main()
    log("RESULT seed=%d: %d problems" % (args.seed, len(probs)))
    for p in probs:
        log("PROBLEM:", p)
    sys.exit(1 if probs else 0)
