#!/usr/bin/env python3
# Scenario 3: the state directory full (a small tmpfs), read-only, or its file replaced by a
# folder, during Enable/Disable: StateNotSaved, nothing changes, other workers keep respawning;
# then space back: works again, and the intent survives a restart.
# Usage: scripts/adversarial/run scripts/adversarial/disk.py [--seed N] [--rounds N]
import argparse, os, random, subprocess, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--rounds", type=int, default=20)
ap.add_argument("--root", default="/tmp/adv-disk")
args = ap.parse_args()
log("seed", args.seed)
rnd = random.Random(args.seed)
problems = []
ERR = "org.example.BgWorker.Error.StateNotSaved"


def fill(d):
    i = 0
    while True:
        try:
            with open(os.path.join(d, "fill%d" % i), "wb") as f:
                f.write(b"\0" * 4096)
                f.flush(); os.fsync(f.fileno())
            i += 1
        except OSError:
            return


def unfill(d):
    for f in os.listdir(d):
        if f.startswith("fill"):
            os.unlink(os.path.join(d, f))


def respawns_continue(rig, name, n=3):
    seen = set()
    def more():
        p = rig.list()[name]["pid"]
        if p:
            seen.add(p)
        return len(seen) >= n
    try:
        wait_for("%s keeps respawning" % name, more, 15)
    except TimeoutError as e:
        problems.append(str(e))


def main():
    root = args.root
    os.makedirs(root, exist_ok=True)
    state = os.path.join(root, "state")
    os.makedirs(state, exist_ok=True)
    subprocess.run(["umount", state], stderr=subprocess.DEVNULL)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=64", "tmpfs", state], check=True)
    workers = {n: toml_worker(n, STEADY) for n in ("s0", "s1", "s2")}
    workers["c0a"] = toml_worker("c0a", CRASH_FAST, restart_delay=0.0, start_limit_burst=0)
    rig = Rig(root, workers, state_dir=state)
    rig.start_bus(); rig.start_daemon()
    m = rig.mgr()
    wait_for("s* running", lambda: all(rig.list()[n]["state"] == "running" for n in ("s0", "s1", "s2")))
    counts = {}
    for r in range(args.rounds):
        mode = rnd.choice(["full", "ro", "dir"])
        target = rnd.choice(["s0", "s1", "s2"])
        before = rig.list()
        # a reachable intent change: enable a disabled, disable an enabled one
        meth = "Disable" if before[target]["enabled"] else "Enable"
        if mode == "full":
            fill(state)
        elif mode == "ro":
            subprocess.run(["mount", "-o", "remount,ro", state], check=True)
        else:
            p = os.path.join(state, "enable-state")
            if os.path.exists(p):
                os.rename(p, os.path.join(state, "saved"))
            os.mkdir(p)
        out = call(m, meth, target)
        after = rig.list()
        counts[(mode, out)] = counts.get((mode, out), 0) + 1
        if out != ERR:
            problems.append("round %d %s: %s %s answered %s, expected StateNotSaved" % (r, mode, meth, target, out))
        for n in ("s0", "s1", "s2"):
            if before[n] != after[n]:
                problems.append("round %d %s: %s changed from %s to %s after a failed %s %s" % (
                    r, mode, n, before[n], after[n], meth, target))
        respawns_continue(rig, "c0a")
        if rig.daemon.poll() is not None:
            problems.append("daemon died: %s" % rig.daemon.returncode)
            return
        # space back
        if mode == "full":
            unfill(state)
        elif mode == "ro":
            subprocess.run(["mount", "-o", "remount,rw", state], check=True)
        else:
            os.rmdir(os.path.join(state, "enable-state"))
            if os.path.exists(os.path.join(state, "saved")):
                os.rename(os.path.join(state, "saved"), os.path.join(state, "enable-state"))
        out2 = call(m, meth, target)
        if out2 != "ok":
            problems.append("round %d %s: after space back %s %s answered %s" % (r, mode, meth, target, out2))
        want = meth == "Enable"
        l = wait_for("settled", lambda: rig.settled())
        if l[target]["enabled"] != want:
            problems.append("round %d: %s Enabled %s after ok %s" % (r, target, l[target]["enabled"], meth))
        if r % 5 == 4:
            intents = {k: v["enabled"] for k, v in rig.list().items()}
            rig.daemon.send_signal(signal.SIGTERM); rig.daemon.wait(30)
            rig.start_daemon(); m = rig.mgr()
            again = {k: v["enabled"] for k, v in rig.list().items()}
            if again != intents:
                problems.append("round %d: intents %s became %s across a restart" % (r, intents, again))
    log("replies by (mode, reply):", counts)
    log("state dir:", os.listdir(state))
    leftovers = [f for f in os.listdir(state) if f.startswith("enable-state.tmp")]
    if leftovers:
        problems.append("temporary files left in the state directory: %s" % leftovers)
    rig.stop()
    subprocess.run(["umount", state])


main()
log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
