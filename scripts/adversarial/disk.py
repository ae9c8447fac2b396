#!/usr/bin/env python3
# Scenario 3: the state directory full (a small tmpfs), read-only, or its file replaced by a
# folder, during Enable/Disable: StateNotSaved, nothing changes, other workers keep respawning;
# then space back: works again, and the intent survives a restart.
# --reloads: also, while the disk is broken, a Reload that flips a worker's configured `enabled`
# (which replaces a choice made over the bus): it answers ok (nothing to write) or StateNotSaved
# and changes nothing; sometimes the daemon is SIGKILLed and started on the broken disk after a
# flip (its start cannot write the choice it drops); every round ends with a SIGKILL of the daemon
# once the disk is back, after which the intents are as before (a Reload whose write failed used
# to be applied anyway, and the next daemon read the stale file).
# Usage: scripts/adversarial/run scripts/adversarial/disk.py [--seed N] [--rounds N] [--reloads]
import argparse, os, random, subprocess, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--rounds", type=int, default=20)
ap.add_argument("--root", default="/tmp/adv-disk")
ap.add_argument("--reloads", action="store_true")
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
    configured = {n: True for n in ("s0", "s1", "s2")}
    def workers():
        w = {n: toml_worker(n, STEADY, enabled=configured[n]) for n in ("s0", "s1", "s2")}
        w["c0a"] = toml_worker("c0a", CRASH_FAST, restart_delay=0.0, start_limit_burst=0)
        return w
    rig = Rig(root, workers(), state_dir=state)
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
        # One worker's configured value flipped 1 to 3 times (twice: back to where the file was).
        flip = rnd.choice(["s0", "s1", "s2"])
        if args.reloads and mode != "dir" and rnd.random() < 0.3:
            # The first flip while no daemon runs: the next one starts on the broken disk and
            # cannot write the choice it drops (logged), so the file is stale until a write.
            rig.daemon.kill(); rig.daemon.wait(30)
            configured[flip] = not configured[flip]
            rig.set_workers(workers())
            rig.start_daemon(); m = rig.mgr()
            rig.wait_settled("settled after a start on the broken disk", 30, ("c0a",))
            counts[(mode, "restart on the broken disk")] = counts.get((mode, "restart on the broken disk"), 0) + 1
        for k in range(rnd.randint(1, 3) if args.reloads else 0):
            configured[flip] = not configured[flip]
            rig.set_workers(workers())
            before = rig.list()
            out = call(m, "Reload")
            counts[(mode, "Reload", out)] = counts.get((mode, "Reload", out), 0) + 1
            if out not in ("ok", ERR):
                problems.append("round %d %s: Reload (%s enabled=%s) answered %s" % (r, mode, flip, configured[flip], out))
            if out == ERR:
                # The files back as the daemon has them, so the next daemon starts with them.
                configured[flip] = not configured[flip]
                rig.set_workers(workers())
                time.sleep(0.2)  # nothing may change: give a wrong stop or start the time to show
                after = rig.list()
                for n in ("s0", "s1", "s2"):
                    if before[n] != after[n]:
                        problems.append("round %d %s: %s changed from %s to %s after a refused Reload" % (
                            r, mode, n, before[n], after[n]))
        respawns_continue(rig, "c0a")
        if rig.daemon.poll() is not None:
            problems.append("daemon died: %s" % rig.daemon.returncode)
            return
        if args.reloads:
            intents = {k: v["enabled"] for k, v in wait_for("settled", lambda: rig.settled()).items()}
        # space back
        if mode == "full":
            unfill(state)
        elif mode == "ro":
            subprocess.run(["mount", "-o", "remount,rw", state], check=True)
        else:
            os.rmdir(os.path.join(state, "enable-state"))
            if os.path.exists(os.path.join(state, "saved")):
                os.rename(os.path.join(state, "saved"), os.path.join(state, "enable-state"))
        if args.reloads:
            # Nothing written since: the file must say what the daemon did.
            rig.daemon.kill(); rig.daemon.wait(30)
            rig.start_daemon(); m = rig.mgr()
            again = {k: v["enabled"] for k, v in rig.list().items()}
            if again != intents:
                problems.append("round %d %s: intents %s became %s across a SIGKILL right after the disk came back" % (
                    r, mode, intents, again))
        out2 = call(m, meth, target)
        if out2 != "ok":
            problems.append("round %d %s: after space back %s %s answered %s" % (r, mode, meth, target, out2))
        want = meth == "Enable"
        l = wait_for("settled", lambda: rig.settled())
        if l[target]["enabled"] != want:
            problems.append("round %d: %s Enabled %s after ok %s" % (r, target, l[target]["enabled"], meth))
        if args.reloads:
            out3 = call(m, "Reload")  # the files, which a refused Reload left unapplied
            if out3 != "ok":
                problems.append("round %d: Reload after space back answered %s" % (r, out3))
            wait_for("settled", lambda: rig.settled())
        if r % 5 == 4 or args.reloads:
            intents = {k: v["enabled"] for k, v in rig.list().items()}
            if args.reloads:
                rig.daemon.kill(); rig.daemon.wait(30)
            else:
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
