#!/usr/bin/env python3
# The notify protocol (issue 11) in an operator's worst week: notify workers that ping, hang,
# never become ready, notify from a setsid() child, ignore the watchdog's SIGABRT, storm
# READY/RELOADING/STOPPING; hostile datagrams sent from inside a worker's process group (a child
# of this script that joins the group: oversized, NUL, invalid UTF-8, 253 fds, BARRIER=1 among
# other lines, WATCHDOG_USEC=0/huge/garbage, EXTEND_TIMEOUT_USEC huge, floods); senders outside
# any worker (this script, another user through setpriv); Stop/Start/Restart/Disable/Enable and
# Reloads changing ready/watchdog/start-timeout/stop-timeout (0 included) racing all of it;
# SIGKILL of bgworkerd and a restart over the stale socket file. After every step: the daemon
# lives, one process group per worker, nothing of a stopped worker left in /proc, the bus agrees
# with /proc (State/Pid, ReadyAt set only while running, StatusText as a confirmed STATUS= left
# it, LastExit watchdog/start-timeout where the step forces it). At the end: no fd growth, and an
# idle daemon without watchdog workers has no wake-up at all.
# Usage: scripts/adversarial/run scripts/adversarial/notify.py [--seed N] [--steps N] [--many N]
import argparse, array, os, random, select, signal, socket, struct, subprocess, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from lib import *

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
ap.add_argument("--steps", type=int, default=150)
ap.add_argument("--many", type=int, default=0, help="watchdog workers of the CPU step (0: skip)")
ap.add_argument("--many-watchdog", type=float, default=0.2, help="their watchdog interval (s)")
ap.add_argument("--root", default="/tmp/adv-notify")
ap.add_argument("--idle", type=float, default=3.0)
args = ap.parse_args()
log("seed", args.seed)
rnd = random.Random(args.seed)
problems = []


def problem(text):
    log("PROBLEM:", text)
    problems.append(text)


AGENT = r'''
import os, signal, socket, sys, time, random
mode = sys.argv[1]
addr = os.environ.get("NOTIFY_SOCKET", "")
if addr.startswith("@"): addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(m):
    try: s.sendto(m.encode() if isinstance(m, str) else m, addr)
    except OSError: pass
wd = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
r = random.Random(os.getpid())
if mode == "ping":
    time.sleep(r.uniform(0, 0.2)); send("READY=1")
    n = 0
    while True:
        n += 1
        send("WATCHDOG=1\nSTATUS=cycle %d" % n if n % 5 == 0 else "WATCHDOG=1")
        time.sleep(wd / 4 if wd else 0.5)
elif mode == "hang":
    send("READY=1")
    end = time.monotonic() + r.uniform(0.1, 1.0)
    while time.monotonic() < end:
        send("WATCHDOG=1"); time.sleep(wd / 4 if wd else 0.1)
    while True: time.sleep(100)
elif mode == "never":
    while True: time.sleep(100)
elif mode == "setsid":
    if os.fork() == 0:
        os.setsid(); send("READY=1\nSTATUS=from a setsid child"); time.sleep(0.05); os._exit(0)
    while True: time.sleep(100)
elif mode == "abrtignore":
    signal.signal(signal.SIGABRT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    send("READY=1"); time.sleep(r.uniform(0.05, 0.5)); send("WATCHDOG=trigger")
    while True: time.sleep(100)
elif mode == "storm":
    send("READY=1")
    while True:
        for _ in range(r.randint(1, 50)):
            send(r.choice(["READY=1", "RELOADING=1", "READY=1\nSTATUS=up", "WATCHDOG=1", "RELOADING=1\nREADY=1"]))
        if r.random() < 0.05: send("STOPPING=1")
        time.sleep(r.uniform(0.01, 0.3))
elif mode == "steady":
    send("READY=1")
    while True:
        time.sleep(wd / 4 if wd else 100); send("WATCHDOG=1")
'''

# Hostile datagrams, sent from a process inside the target's group.
HUGE = "18446744073709551615"
PAYLOADS = {
    "oversized": b"STATUS=" + b"x" * 5000,
    "max4096": b"STATUS=" + b"y" * (4096 - 7),
    "nul": b"READY=1\0STATUS=nul",
    "badutf8": b"STATUS=\xff\xfe\xc3(",
    "ctl": b"STATUS=\x1b[31mred\x07\r",
    "empty": b"",
    "nl": b"\n\n\n",
    "noeq": b"READY\nWATCHDOG\nSTATUS",
    "wd0": b"WATCHDOG_USEC=0",
    "wd1": b"WATCHDOG_USEC=1",
    "wdhuge": b"WATCHDOG_USEC=" + HUGE.encode(),
    "wdover": b"WATCHDOG_USEC=99999999999999999999999",
    "wdgarbage": b"WATCHDOG_USEC=-5\nWATCHDOG_USEC=abc",
    "exthuge": b"EXTEND_TIMEOUT_USEC=" + HUGE.encode(),
    "ext0": b"EXTEND_TIMEOUT_USEC=0",
    "trigger": b"WATCHDOG=trigger",
    "ready": b"READY=1",
    "reloading": b"RELOADING=1",
    "stopping": b"STOPPING=1",
    "all": b"READY=1\nRELOADING=1\nSTOPPING=1\nWATCHDOG=1\nSTATUS=all",
    "dupkeys": b"STATUS=a\nSTATUS=b\nREADY=0\nREADY=1",
    "mainpid": b"MAINPID=1\nFDSTORE=1\nERRNO=5\nBUSERROR=x",
}


def sender_child(pgid, datagrams, fds=0, barrier=True, uid=None):
    """Forks a child that speaks for the worker whose process group is `pgid` (None: for no
    worker), sends each datagram (with `fds` file descriptors on the first), then waits on a
    barrier; returns its exit status: 0 sent and barrier passed, 2 could join the worker's group
    (each worker has a session of its own: no process outside it may), 3 barrier timed out.
    Each worker leads its own session, so the rig cannot join its group: as root it sends the
    worker's pid as its SCM_CREDENTIALS instead (CAP_SYS_ADMIN may), which the daemon places alike."""
    path = os.path.join(rig.root, "run", "notify")
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            if pgid is not None:
                try:
                    os.setpgid(0, pgid)
                    os._exit(2)
                except OSError:
                    pass
            if uid is not None:
                os.setgid(uid); os.setuid(uid)
            creds = [] if pgid is None else [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("iII", pgid, 0, 0))]
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            for i, d in enumerate(datagrams):
                try:
                    if i == 0 and fds:
                        extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(fds)]
                        s.sendmsg([d], creds + [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", extra))], 0, path)
                        for f in extra: os.close(f)
                    else:
                        s.sendmsg([d], creds, 0, path)
                except OSError:
                    pass
            if barrier:
                r, w = os.pipe()
                try:
                    s.sendmsg([b"BARRIER=1"], creds + [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))], 0, path)
                except OSError:
                    os._exit(4)
                os.close(w)
                p = select.poll(); p.register(r, select.POLLHUP)
                os._exit(0 if p.poll(5000) else 3)
            os._exit(0)
        except BaseException:
            os._exit(5)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# name -> (mode, keys). Reloads change the keys at random.
KINDS = {
    "ping": ("ping", dict(ready="notify", watchdog=0.4, start_timeout=3.0)),
    "pingx": ("ping", dict(ready="exec", watchdog=0.3)),
    "hang": ("hang", dict(ready="notify", watchdog=0.3, restart_delay=0.2, start_limit_burst=0)),
    "never": ("never", dict(ready="notify", start_timeout=0.4, restart_delay=0.2, start_limit_burst=0)),
    "setsid": ("setsid", dict(ready="notify", start_timeout=0.5, restart_delay=0.2, start_limit_burst=0)),
    "abrt": ("abrtignore", dict(ready="notify", watchdog=5.0, stop_timeout=0.3, restart_delay=0.2, start_limit_burst=0)),
    "abrt0": ("abrtignore", dict(ready="notify", watchdog=5.0, stop_timeout=0.0, restart_delay=0.2, start_limit_burst=0)),
    "storm": ("storm", dict(ready="notify", stop_timeout=0.3, restart_delay=0.1, start_limit_burst=0)),
    "st": ("steady", dict(ready="notify")),
    "stw": ("steady", dict(ready="notify", watchdog=1.0, restart_delay=0.2, start_limit_burst=0)),
    "plain": (None, dict()),
    "wdu": ("steady", dict(ready="notify", start_timeout=0)),
}
STEADY_NOTIFY = ["st", "stw"]  # send no STATUS= of their own: an injected one must stick
agent_path = None


def worker_toml(name, keys):
    mode, _ = KINDS[name]
    argv = STEADY if mode is None else ["/usr/bin/python3", agent_path, mode]
    return toml_worker(name, argv, **keys)


def config(overrides={}):
    return {n: worker_toml(n, dict(KINDS[n][1], **overrides.get(n, {}))) for n in KINDS}


def getall(name):
    c = rig.conn()
    p = dbus.Interface(c.get_object(NAME, "/org/example/BgWorker/worker/" + name.replace("-", "_"), introspect=False),
                       "org.freedesktop.DBus.Properties")
    try:
        return {str(k): v for k, v in p.GetAll(NAME + ".Worker").items()}
    finally:
        c.close()  # now, not at a garbage collection in the idle window (a NameOwnerChanged)


def check_alive(label):
    if rig.daemon.poll() is not None:
        problem("%s: bgworkerd died (status %s)" % (label, rig.daemon.returncode))
        finish()


def session_leader(pid):
    try:
        st = open("/proc/%d/stat" % pid).read()
        return int(st[st.rindex(")") + 2:].split()[3]) == pid
    except (OSError, ValueError):
        return False


def snapshot_problems():
    """Problems of one snapshot: groups from /proc, then each worker's GetAll (ReadyAt vs State)."""
    probs = []
    groups = {}
    for pid, (name, pgid, ppid, comm, st) in tagged().items():
        if st == "Z" or session_leader(pid):
            continue  # a setsid() child has left its worker by design (docs/workers.md)
        groups.setdefault(name, set()).add(pgid)
    for name, g in groups.items():
        if len(g) > 1:
            probs.append("%s has %d process groups %s" % (name, len(g), sorted(g)))
        if name not in KINDS:
            probs.append("processes of unknown worker %s" % name)
    for name in KINDS:
        a = getall(name)
        state, pid, ready = str(a["State"]), int(a["Pid"]), int(a["ReadyAt"])
        if (state == "running") != (ready != 0):
            probs.append("%s %s with ReadyAt %d" % (name, state, ready))
        g = groups.get(name, set())
        if state in ("running", "starting", "stopping"):
            if pid == 0 and state != "starting":
                probs.append("%s %s with pid 0" % (name, state))
            elif pid and not os.path.exists("/proc/%d" % pid):
                probs.append("%s %s pid %d not in /proc" % (name, state, pid))
            elif pid and g and g != {pid}:
                probs.append("%s %s pid %d but groups %s" % (name, state, pid, sorted(g)))
        else:
            if pid:
                probs.append("%s %s but pid %d" % (name, state, pid))
            if g:
                probs.append("%s %s but groups %s in /proc" % (name, state, sorted(g)))
    return probs


def check(label, patience=4.0):
    """The invariants; a mismatch must persist for `patience` seconds (states move meanwhile)."""
    check_alive(label)
    end = time.monotonic() + patience
    while True:
        try:
            probs = snapshot_problems()
        except dbus.DBusException as e:
            probs = ["bus: %s" % e.get_dbus_name()]
        # Two groups of one worker is never transient: it is reported at once.
        for p in [p for p in probs if "process groups" in p]:
            problem("%s: %s" % (label, p))
        probs = [p for p in probs if "process groups" not in p]
        if not probs or time.monotonic() > end:
            break
        time.sleep(0.1)
    for p in probs:
        problem("%s: %s" % (label, p))
    check_alive(label)


def daemon_fds():
    return len(os.listdir("/proc/%d/fd" % rig.daemon.pid))


def finish():
    try:
        rig.stop()
    except Exception:
        pass
    log("RESULT seed=%d: %d problems" % (args.seed, len(problems)))
    for p in problems:
        log("PROBLEM:", p)
    sys.exit(1 if problems else 0)


# ---- steps
overrides = {}


def step_inject(label):
    name = rnd.choice(list(KINDS))
    pid = int(getall(name)["Pid"])
    if not pid:
        return "inject %s: no pid" % name
    kind = rnd.choice(list(PAYLOADS) + ["fds253", "barrier+", "flood", "statuscheck"])
    if kind == "fds253":
        rc = sender_child(pid, [b"STATUS=fds"], fds=253)
    elif kind == "barrier+":
        rc = sender_child(pid, [b"WATCHDOG=1"], barrier=False)
        # BARRIER=1 among other lines, with its fd: a message as any other.
        path = os.path.join(rig.root, "run", "notify")
        rc = sender_child(pid, [b"STATUS=barrier-mixed\nBARRIER=1"], fds=1)
    elif kind == "flood":
        rc = sender_child(pid, [rnd.choice([b"READY=1", b"RELOADING=1\nREADY=1", b"STOPPING=1", b"WATCHDOG=1"])
                                for _ in range(rnd.choice([100, 2000]))])
    elif kind == "statuscheck" and name in STEADY_NOTIFY:
        # Only a worker not on its way out: a stopping one's messages are ignored (rightly).
        if str(getall(name)["State"]) not in ("running", "starting"):
            return "statuscheck %s: not running" % name
        text = "check %d" % rnd.randint(0, 10**9)
        rc = sender_child(pid, [("STATUS=" + text).encode()])
        if rc == 0:
            a = getall(name)
            keys = dict(KINDS[name][1], **overrides.get(name, {}))
            speaks = keys.get("ready") == "notify" or keys.get("watchdog", 0) > 0  # else refused, rightly
            if speaks and int(a["Pid"]) == pid and str(a["State"]) in ("running", "starting") and str(a["StatusText"]) != text:
                problem("%s: %s pid %d StatusText %r after a confirmed STATUS=%s" % (label, name, pid, str(a["StatusText"]), text))
    else:
        rc = sender_child(pid, [PAYLOADS.get(kind, b"READY=1")])
    if rc == 2:
        problem("%s: a process outside %s joined its process group %d" % (label, name, pid))
    return "inject %s into %s (pid %d): rc %d" % (kind, name, pid, rc)


def step_outsider(label):
    name = rnd.choice(list(KINDS))
    before = getall(name)
    uid = rnd.choice([None, 65534])
    rc = sender_child(None, [rnd.choice([b"READY=1\nSTATUS=outsider", b"WATCHDOG=trigger", b"STOPPING=1"])], uid=uid)
    after = getall(name)
    if str(after["StatusText"]) == "outsider":
        problem("%s: an outsider's STATUS reached %s" % (label, name))
    return "outsider uid %s -> %s rc %d" % (uid, name, rc)


def step_call(label):
    name = rnd.choice(list(KINDS))
    method = rnd.choice(["Stop", "Start", "Restart", "Disable", "Enable", "Enable", "Start"])
    m = rig.mgr()
    keys = dict(KINDS[name][1], **overrides.get(name, {}))
    t = time.monotonic()
    r = call(m, method, name, timeout=30)
    took = time.monotonic() - t
    # Every start-timeout and stop-timeout here is at most 3 s; only the first start of a worker
    # that never sends READY=1 may keep a call waiting longer: with start-timeout 0, or after an
    # injected EXTEND_TIMEOUT_USEC (as systemd's start job, the call waits as long as it says).
    unbounded = name in ("never", "setsid")
    if took > 10 and not unbounded and method != "Disable":
        problem("%s: %s %s replied after %.1f s (%s)" % (label, method, name, took, r))
    return "%s %s: %s (%.2f s)" % (method, name, r, took)


def step_reload(label):
    name = rnd.choice([n for n in KINDS if n != "plain"])
    o = {}
    for key, values in (("watchdog", [0, 0.2, 0.5, 2.0]), ("ready", ["exec", "notify"]),
                        ("start_timeout", [0, 0.3, 2.0]), ("stop_timeout", [0, 0.2, 1.0])):
        if rnd.random() < 0.4:
            o[key] = rnd.choice(values)
    overrides[name] = o
    rig.set_workers(config(overrides))
    r = call(rig.mgr(), "Reload")
    return "reload %s %s: %s" % (name, o, r)


def step_kill_daemon(label):
    state = {n: str(getall(n)["State"]) for n in KINDS}
    rig.daemon.kill(); rig.daemon.wait()
    sock = os.path.join(rig.root, "run", "notify")
    left = os.path.exists(sock)
    rig.start_daemon()
    return "SIGKILL daemon (states %s); socket file left: %s; restarted" % (
        ",".join("%s=%s" % kv for kv in state.items() if kv[1] != "running"), left)


def step_watchdog_exit(label):
    """A hang worker must end as LastExit watchdog; a never worker as start-timeout."""
    name, want = rnd.choice([("hang", "watchdog"), ("never", "start-timeout"), ("abrt", "watchdog"), ("abrt0", "watchdog")])
    keys = dict(KINDS[name][1], **overrides.get(name, {}))
    if keys.get("ready") != "notify" and want == "start-timeout" or (want == "watchdog" and name == "hang" and not keys.get("watchdog")):
        return "watchdog-exit %s: not configured for it (%s)" % (name, keys)
    if want == "start-timeout" and not keys.get("start_timeout"):
        return "watchdog-exit %s: start-timeout 0" % name
    if keys.get("ready") != "notify" and not keys.get("watchdog"):
        return "watchdog-exit %s: does not speak the protocol now (%s)" % (name, keys)
    call(rig.mgr(), "Enable", name); call(rig.mgr(), "Start", name)
    try:
        wait_for("%s LastExit %s" % (name, want), lambda: str(getall(name)["LastExit"]) == want, 15)
        return "watchdog-exit %s: LastExit %s" % (name, want)
    except TimeoutError as e:
        a = getall(name)
        problem("%s: %s never had LastExit %s (%s/%s, LastExit %s)" % (label, name, want, a["State"], a["Pid"], a["LastExit"]))
        return "watchdog-exit %s failed" % name


STEPS = [(step_inject, 10), (step_outsider, 2), (step_call, 6), (step_reload, 3), (step_kill_daemon, 1),
         (step_watchdog_exit, 1)]

agent_path = os.path.join(args.root, "agent.py")
shutil.rmtree(args.root, ignore_errors=True)
rig = Rig(args.root, {})
with open(agent_path, "w") as f:
    f.write(AGENT)
rig.set_workers(config())
rig.start_bus(); rig.start_daemon()
time.sleep(1.5)
check("start")
# The fd baseline: only the plain worker, everything else disabled, settled.
def quiet_fds(label):
    m = rig.mgr()
    for n in KINDS:
        call(m, "Disable" if n != "plain" else "Enable", n)
    rig.wait_settled(label, 30)
    time.sleep(1.5)
    return daemon_fds()
fds0 = quiet_fds("baseline")
for n in KINDS:
    call(rig.mgr(), "Enable", n)
log("baseline fds", fds0)

for i in range(args.steps):
    fn = rnd.choices([s for s, _ in STEPS], [w for _, w in STEPS])[0]
    label = "step %d" % i
    try:
        what = fn(label)
    except dbus.DBusException as e:
        what = "%s: bus error %s" % (fn.__name__, e.get_dbus_name())
    log(label, what)
    check(label)

PINGER = r'''
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    const char *path = getenv("NOTIFY_SOCKET"), *wd = getenv("WATCHDOG_USEC");
    if (!path || !wd) return 2;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    long usec = atol(wd) / 4;
    struct timespec t = { usec / 1000000, (usec % 1000000) * 1000 };
    sendto(fd, "READY=1", 7, 0, (struct sockaddr *)&a, sizeof a);
    for (;;) { nanosleep(&t, NULL); sendto(fd, "WATCHDOG=1", 10, 0, (struct sockaddr *)&a, sizeof a); }
}
'''

if args.many:
    # Many watchdog workers with short intervals (a C pinger: WATCHDOG=1 every quarter of the
    # interval): the daemon's CPU while they ping, and no worker killed by a deadline the daemon
    # itself was too busy to see met.
    with open(os.path.join(args.root, "pinger.c"), "w") as f:
        f.write(PINGER)
    pinger = os.path.join(args.root, "pinger")
    subprocess.run(["cc", "-O2", "-o", pinger, os.path.join(args.root, "pinger.c")], check=True)
    many = {("m%d" % i): toml_worker("m%d" % i, [pinger], ready="notify", watchdog=args.many_watchdog, restart_delay=0.5)
            for i in range(args.many)}
    rig.set_workers(dict(config(overrides), **many))
    call(rig.mgr(), "Reload", timeout=120)
    try:
        wait_for("%d watchdog workers running" % args.many,
                 lambda: sum(1 for n, w in rig.list().items() if n.startswith("m") and w["state"] == "running") == args.many, 300)
    except TimeoutError:
        # Seen with 1000 at 0.2 s (20,000 pings/s, debug build, 2 loaded cores): 272 failed
        # after 4252 watchdog kills. Overload, or deadlines judged before queued pings were read.
        states = collections.Counter(w["state"] for n, w in rig.list().items() if n.startswith("m"))
        problem("%d watchdog workers at %.2f s never all running: %s" % (args.many, args.many_watchdog, dict(states)))
    t0 = sum(int(x) for x in open("/proc/%d/stat" % rig.daemon.pid).read().rsplit(")", 1)[1].split()[11:13])
    time.sleep(5)
    t1 = sum(int(x) for x in open("/proc/%d/stat" % rig.daemon.pid).read().rsplit(")", 1)[1].split()[11:13])
    log("%d watchdog workers (%.2f s, pinging every quarter): daemon CPU %.1f%% of one core" % (
        args.many, args.many_watchdog, (t1 - t0) / os.sysconf("SC_CLK_TCK") / 5 * 100))
    killed = [n for n in many if str(getall(n)["LastExit"]) == "watchdog"]
    if killed:
        log("watchdog workers killed by the watchdog meanwhile (pings late under load?): %d %s" % (len(killed), killed[:5]))
    rig.set_workers(config(overrides)); call(rig.mgr(), "Reload", timeout=120)

# WATCHDOG_USEC= ever smaller from a worker with no earlier timer: each message moves the deadline
# earlier (a new loop timer, the old one cancelled far in the future). The daemon's memory must
# not grow by the cancelled ones (it grew 16 MB a million messages, for good).
call(rig.mgr(), "Enable", "wdu"); call(rig.mgr(), "Start", "wdu")
try:
    wait_for("wdu running", lambda: rig.list()["wdu"]["state"] == "running", 15)
    def vmdata():
        return int([l for l in open("/proc/%d/status" % rig.daemon.pid) if l.startswith("VmData")][0].split()[1])
    before = vmdata()
    n = 300000
    rc = sender_child(rig.list()["wdu"]["pid"], [b"WATCHDOG_USEC=%d" % (10**15 - i * 10**6) for i in range(n)])
    grew = vmdata() - before
    log("%d shrinking WATCHDOG_USEC (rc %d): daemon VmData grew %d kB" % (n, rc, grew))
    if grew > 2048:
        problem("daemon VmData grew %d kB after %d shrinking WATCHDOG_USEC" % (grew, n))
except TimeoutError as e:
    problem("wdu: %s" % e)
check("shrink")

# The end: back to the first definitions, fds as at the start, and no wake-up without watchdogs.
overrides.clear()
rig.set_workers(config())
call(rig.mgr(), "Reload")
check("end")
fds1 = quiet_fds("end")
log("fds: %d at the start, %d at the end" % (fds0, fds1))
if fds1 > fds0:
    problem("daemon fds grew from %d to %d" % (fds0, fds1))
time.sleep(2.5)  # the refusal window's last report
import gc
gc.collect()  # every client connection of this script closed before the window
time.sleep(1.0)
a = thread_switches(rig.daemon.pid)
start, when, last = time.monotonic(), [], a
while time.monotonic() - start < args.idle:  # sampled, to say when a wake-up came
    time.sleep(0.25)
    now = thread_switches(rig.daemon.pid)
    if now != last:
        when.append(round(time.monotonic() - start, 2))
    last = now
b = last
woke = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}
log("idle %.0fs: context switches %s%s" % (args.idle, woke or "none", " at %s s" % when if when else ""))
if woke:
    problem("idle daemon woke: %s" % woke)
check("final")
finish()
