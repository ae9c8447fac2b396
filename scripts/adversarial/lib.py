# Shared harness of the adversarial scripts: a private dbus-daemon and bgworkerd (process runner)
# in a folder of their own, python3-dbus clients, and a /proc view of the workers.
#
# Run every script through scripts/adversarial/run (a PID namespace of its own, so that the daemon's
# process-group record can only ever kill processes of this run, and /proc shows only them).
import os, sys, time, json, random, signal, subprocess, shutil, errno, collections
import dbus

BIN = os.environ.get("BGW_BIN") or os.path.join(os.path.dirname(__file__), "../../.build/release")
BIN = os.path.abspath(BIN)
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
NAME = "org.example.BgWorker"
MGR = "/org/example/BgWorker"
TAG = "ADV_TAG"


def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, flush=True)


def wait_for(what, fn, timeout=20.0, step=0.02):
    """Polls fn until it returns a truthy value or the deadline passes (raises with `what`)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except dbus.DBusException as e:
            last = e
        time.sleep(step)
    raise TimeoutError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))


def toml_worker(name, argv, **kw):
    lines = ["[worker.%s]" % name, "exec = %s" % json.dumps(argv), 'run-on = "any"']
    for k, v in kw.items():
        key = k.replace("_", "-")
        if isinstance(v, bool):
            lines.append("%s = %s" % (key, "true" if v else "false"))
        elif isinstance(v, (int, float)):
            lines.append("%s = %s" % (key, v))
        else:
            lines.append("%s = %s" % (key, json.dumps(v)))
    lines.append('environment = { %s = "1" }' % TAG)
    return "\n".join(lines) + "\n"


SH = "/bin/sh"
# Worker kinds the scripts use.
STEADY = [SH, "-c", "exec sleep 100000"]
CRASH_FAST = [SH, "-c", "sleep 0.05; exit 1"]
CRASH_NOW = [SH, "-c", "exit 7"]
FORKER = [SH, "-c", "sleep 100000 & exit 0"]
STUBBORN = [SH, "-c", "trap '' TERM; while :; do sleep 0.5; done"]


class Rig:
    def __init__(self, root, workers, state_dir=None, log_level="info"):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.sock = os.path.join(root, "bus.sock")
        self.state = state_dir or os.path.join(root, "state")
        os.makedirs(self.state, exist_ok=True)
        os.makedirs(os.path.join(root, "workers.d"), exist_ok=True)
        os.makedirs(os.path.join(root, "run"), exist_ok=True)
        self.conf = os.path.join(root, "bgworkerd.toml")
        with open(self.conf, "w") as f:
            f.write('[daemon]\nlog-level = "%s"\nrunner = "process"\nstate-directory = "%s"\n'
                    'admin-group = "root"\n\n[ha]\nsource = "none"\n' % (log_level, self.state))
        self.set_workers(workers)
        self.bus = None
        self.daemon = None
        self.daemon_log = os.path.join(root, "bgworkerd.log")
        self.starts = 0
        # argv put before bgworkerd's, e.g. ["prlimit", "--nofile=1024:1024", "--"]
        self.daemon_prefix = []

    def set_workers(self, workers):
        """workers: dict name -> toml text. Writes one drop-in per worker."""
        d = os.path.join(self.root, "workers.d")
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        for n, text in workers.items():
            with open(os.path.join(d, n + ".toml"), "w") as f:
                f.write(text)
        self.workers = dict(workers)

    def start_bus(self):
        conf = os.path.join(self.root, "bus.conf")
        subprocess.run(["bash", "-c", 'source scripts/lib/demo-config.sh && write_demo_bus_config "$@"',
                        "x", conf, self.sock, REPO, "root"], cwd=REPO, check=True)
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.bus = subprocess.Popen(["dbus-daemon", "--config-file=" + conf, "--nofork",
                                     "--print-address=1"], stdout=subprocess.PIPE,
                                    stderr=open(os.path.join(self.root, "dbus.log"), "a"))
        self.bus.stdout.readline()
        self.address = "unix:path=" + self.sock

    def start_daemon(self, wait=True):
        env = dict(os.environ, RUNTIME_DIRECTORY=os.path.join(self.root, "run"))
        env.pop("NOTIFY_SOCKET", None)
        self.daemon = subprocess.Popen(self.daemon_prefix + [os.path.join(BIN, "bgworkerd"), "--bus", self.address,
                                        "--config", self.conf, "--runner", "process"],
                                       stdout=open(self.daemon_log, "a"), stderr=subprocess.STDOUT,
                                       env=env)
        self.starts += 1
        if wait:
            c = self.conn()
            # A SIGKILLed daemon's name may still show as owned until the bus sees it gone.
            bus = dbus.Interface(c.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus"), "org.freedesktop.DBus")
            wait_for("daemon owns its name", lambda: c.name_has_owner(NAME) and
                     bus.GetConnectionUnixProcessID(c.get_name_owner(NAME)) == self.daemon.pid, 30)
        return self.daemon

    def conn(self):
        return dbus.bus.BusConnection(self.address)

    def mgr(self, c=None):
        c = c or self.conn()
        return dbus.Interface(c.get_object(NAME, MGR, introspect=False), NAME)

    def list(self, m=None):
        m = m or self.mgr()
        return {str(n): dict(state=str(s), enabled=bool(e), pid=int(p)) for n, s, e, p, o in m.ListWorkers()}

    def settled(self, m=None, ignore=()):
        """The listing once no worker (but those in `ignore`, crash-loopers) is starting or stopping."""
        l = self.list(m)
        self.last_listing = l
        if any(w["state"] in ("starting", "stopping") for n, w in l.items() if n not in ignore):
            return None
        return l

    def wait_settled(self, what, timeout=30, ignore=()):
        try:
            return wait_for(what, lambda: self.settled(ignore=ignore), timeout)
        except TimeoutError:
            log("NOT SETTLED (%s) after %ss: %s" % (what, timeout, getattr(self, "last_listing", None)))
            log("procs:", tagged())
            raise

    def stop(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.bus:
            self.bus.terminate()
            self.bus.wait()


def tagged():
    """Every process of this namespace started by a daemon: pid -> (worker, pgid, ppid, comm, state)."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            env = open("/proc/%s/environ" % p, "rb").read().split(b"\0")
            if (TAG + "=1").encode() not in env:
                continue
            name = next(e[len(b"BGWORKER_NAME="):].decode() for e in env if e.startswith(b"BGWORKER_NAME="))
            st = open("/proc/%s/stat" % p).read()
            rest = st[st.rindex(")") + 2:].split()
            out[int(p)] = (name, int(rest[2]), int(rest[1]), st[st.index("(") + 1:st.rindex(")")], rest[0])
        except (OSError, StopIteration):
            continue
    return out


def proc_problems(listing, allow_transient=False, only=None):
    """Compares the bus's view with /proc. Returns a list of problems (empty: they agree)."""
    probs = []
    procs = {p: v for p, v in tagged().items() if v[4] != "Z"}
    groups = {}
    for pid, (name, pgid, ppid, comm, st) in procs.items():
        groups.setdefault(name, set()).add(pgid)
    for name, w in listing.items():
        g = groups.pop(name, set())
        if only is not None and name not in only:
            continue
        if w["state"] in ("running", "starting", "stopping"):
            if w["pid"] == 0 and not (allow_transient and w["state"] == "starting"):
                probs.append("%s %s with pid 0" % (name, w["state"]))
            elif w["pid"] not in procs and not allow_transient:
                probs.append("%s %s pid %d not in /proc" % (name, w["state"], w["pid"]))
            if len(g) > 1:
                probs.append("%s: %d process groups in /proc %s (bus pid %d)" % (name, len(g), sorted(g), w["pid"]))
            elif g and w["pid"] not in g and not allow_transient:
                probs.append("%s: group %s in /proc is not the bus pid %d" % (name, sorted(g), w["pid"]))
        else:
            if w["pid"] != 0:
                probs.append("%s %s but pid %d" % (name, w["state"], w["pid"]))
            if g and not allow_transient:
                probs.append("%s %s but processes in /proc: %s" % (
                    name, w["state"], [(p, v) for p, v in procs.items() if v[0] == name]))
    for name, g in groups.items():
        probs.append("processes of unknown worker %s: groups %s" % (name, sorted(g)))
    return probs


def call(m, method, *args, timeout=30):
    """Returns 'ok' or the D-Bus error's short name."""
    try:
        getattr(m, method)(*args, timeout=timeout)
        return "ok"
    except dbus.DBusException as e:
        return e.get_dbus_name() or str(e)


def thread_switches(pid):
    """Context switches of each thread of `pid`: (tid, comm) -> count (an idle daemon adds none)."""
    out = {}
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            st = open("/proc/%d/task/%s/status" % (pid, t)).read()
            comm = open("/proc/%d/task/%s/comm" % (pid, t)).read().strip()
        except OSError:
            continue
        out[(t, comm)] = sum(int(l.split()[1]) for l in st.splitlines() if "ctxt_switches:" in l)
    return out
