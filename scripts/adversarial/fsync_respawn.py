# Issue 9: a respawn must not wait for another request's state write. Every fsync of the daemon
# sleeps 2 s (LD_PRELOAD shim, path in $SHIM: build it as bgworker-bench does, DaemonBench.swift);
# Disable of one worker, then a crash of another.
import sys, os, subprocess, time, threading
sys.path.insert(0, os.path.dirname(__file__))
from lib import *
root = "/tmp/adv-fsync"
shutil.rmtree(root, ignore_errors=True)
rig = Rig(root, {"crasher": toml_worker("crasher", STEADY, restart_delay=0), "toggler": toml_worker("toggler", STEADY)}, log_level="debug")
rig.start_bus()
os.environ["LD_PRELOAD"] = os.environ["SHIM"]; os.environ["BGW_BENCH_FSYNC_DELAY_MS"] = "2000"
rig.start_daemon()
del os.environ["LD_PRELOAD"]
rig.wait_settled("first start")
m = rig.mgr()
pid = rig.list(m)["crasher"]["pid"]
t = threading.Thread(target=lambda: rig.mgr().Disable("toggler", timeout=30)); t.start()
time.sleep(0.3)
t0 = time.monotonic(); os.kill(pid, 9)
if os.environ.get("STACK"):
    time.sleep(0.2)
    print(subprocess.run(["gdb", "-p", str(rig.daemon.pid), "-batch", "-ex", "thread apply all bt 25"], capture_output=True, text=True).stdout)
new = wait_for("respawn", lambda: (lambda p: p if p and p != pid else None)(rig.list(m)["crasher"]["pid"]), 30, 0.005)
log("respawned after %.1f ms" % ((time.monotonic() - t0) * 1000))
t.join(); rig.stop()
