# The lost reply of the loop branch (issue 9): concurrent Stop a / Stop b, then Start both and
# ListWorkers, each with a deadline. Prints the round that hangs and leaves the daemon running.
import sys, os, subprocess, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
root = "/tmp/adv-concurrent-stop"
shutil.rmtree(root, ignore_errors=True)
rig = Rig(root, {n: toml_worker(n, STEADY) for n in ("a", "b")}, log_level=os.environ.get("LOGLEVEL", "info"))
rig.start_bus()
rig.start_daemon()
rig.wait_settled("first start")

def busctl(*args):
    return subprocess.Popen(["busctl", "--address=" + rig.address, "--timeout=10", "call", NAME, MGR, NAME] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

for r in range(rounds):
    for verb in ("Stop", "Start"):
        ps = [busctl(verb, "s", n) for n in ("a", "b")]
        for n, p in zip("ab", ps):
            out, err = p.communicate()
            if p.returncode != 0:
                log("round %d: %s %s failed: %s" % (r, verb, n, err.decode().strip()))
                l = subprocess.run(["busctl", "--address=" + rig.address, "--timeout=5", "call", NAME, MGR, NAME, "ListWorkers"],
                                   capture_output=True)
                log("ListWorkers after:", l.returncode, l.stdout.decode().strip(), l.stderr.decode().strip())
                log("daemon pid", rig.daemon.pid, "left running; log", rig.daemon_log)
                if os.environ.get("HOLD"):
                    time.sleep(100000)
                sys.exit(1)
log("%d rounds, no lost reply" % rounds)
rig.stop()
