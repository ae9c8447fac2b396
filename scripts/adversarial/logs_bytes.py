#!/usr/bin/env python3
# Reproducer (fixed, issue 12): a worker whose output held a NUL byte (or bytes that are not UTF-8) made the manager's
# Logs fail for that worker, with a generic org.freedesktop.DBus.Error.Failed, for as long as the
# line stays in the buffer (log-buffer-lines). Exits 1 while that is so.
# Also: an endless line without a newline must not grow the daemon's memory.
# Usage: scripts/adversarial/run scripts/adversarial/logs_bytes.py
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

problems = []
w = {"nul": toml_worker("nul", [SH, "-c", "printf 'before\\n' ; printf 'a\\000b\\n'; printf 'after\\n'; exec sleep 100000"]),
     "latin1": toml_worker("latin1", [SH, "-c", "printf 'caf\\351\\n'; exec sleep 100000"]),
     "endless": toml_worker("endless", [SH, "-c", "yes x | tr -d '\\n'"], enabled=False)}
rig = Rig("/tmp/adv-logs", w)
shutil.rmtree(rig.state, ignore_errors=True); os.makedirs(rig.state)
rig.start_bus(); rig.start_daemon()
m = rig.mgr()
for name in ("nul", "latin1"):
    def got():
        try:
            out = m.Logs(name, dbus.UInt32(10))
            return ("ok", [str(t) for _, t in out]) if len(out) >= 1 else None
        except dbus.DBusException as e:
            return ("error", "%s: %s" % (e.get_dbus_name(), e.get_dbus_message()))
    try:
        res = wait_for("Logs of %s" % name, got, 10)
    except TimeoutError as e:
        res = ("timeout", str(e))
    log("Logs %s -> %s" % (name, res))
    if res[0] != "ok":
        problems.append("Logs(%s) answered %s" % (name, res[1]))
pid = rig.daemon.pid
def rss():
    return int([l for l in open("/proc/%d/status" % pid) if l.startswith("VmRSS")][0].split()[1])
r0 = rss()
call(m, "Enable", "endless")
time.sleep(5)  # measurement window
r1 = rss()
call(m, "Disable", "endless")
log("endless line for 5 s: daemon RSS %d -> %d kB" % (r0, r1))
if r1 - r0 > 100_000:
    problems.append("endless line: daemon RSS grew by %d kB in 5 s" % (r1 - r0))
if rig.daemon.poll() is not None:
    problems.append("daemon died: %s" % rig.daemon.returncode)
rig.stop()
log("RESULT: %d problems" % len(problems))
for p in problems:
    log("PROBLEM:", p)
sys.exit(1 if problems else 0)
