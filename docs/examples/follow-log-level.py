#!/usr/bin/python3
"""A bgworkerd worker in Python: periodic work, and its log level followed over D-Bus.

dbus-python with the GLib main loop (Debian: python3-dbus python3-gi). Shows the three things a
long-lived worker needs (docs/workers.md explains why):
  1. the level from the environment at start (BGWORKER_LOG_LEVEL), then from the bus: the
     EffectiveLogLevel of its own object (BGWORKER_OBJECT_PATH; the worker's own level, else the
     daemon's), or the daemon's LogLevel when run without that variable;
  2. signals believed only from the current owner of org.example.BgWorker, and the level read
     anew whenever that name gets a (new) owner;
  3. a new connection when the old one ends (libdbus connections do not recover), after a delay
     that doubles up to a cap, while the work goes on.
"""
import os
import random
import signal
import sys
import time

import dbus
import dbus.bus
import dbus.mainloop.glib
from gi.repository import GLib

SERVICE = "org.example.BgWorker"
MANAGER = "/org/example/BgWorker"
OBJECT = os.environ.get("BGWORKER_OBJECT_PATH", "")
# What gives the level: (object, interface, property).
if OBJECT:
    PATH, INTERFACE, PROPERTY = OBJECT, "org.example.BgWorker.Worker", "EffectiveLogLevel"
else:
    PATH, INTERFACE, PROPERTY = MANAGER, SERVICE, "LogLevel"
PROPERTIES = "org.freedesktop.DBus.Properties"
LEVELS = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
PRIORITY = {"trace": 7, "debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3, "critical": 2}

name = os.environ.get("BGWORKER_NAME", "follow-log-level")
level = os.environ.get("BGWORKER_LOG_LEVEL", "info")
if level not in LEVELS:
    level = "info"


def log(at, message):
    """One line on stdout with its sd-daemon priority prefix (<7> debug ... <2> critical)."""
    if LEVELS.index(at) >= LEVELS.index(level):
        print(f"<{PRIORITY[at]}>{message}", flush=True)


def set_level(new, source):
    global level
    if new not in LEVELS:
        log("warning", f"{source} announced an unknown log level {new!r}")
        return
    if new != level:
        old, level = level, new
        print(f"<5>log level {new} (from {source}, was {old})", flush=True)


class DaemonFollower:
    def __init__(self):
        self.bus = None
        self.failures = 0  # attempts since the last healthy connection
        self.connected_at = 0.0
        self.connect()

    def connect(self):
        try:
            # A private connection of our own (never the shared dbus.SystemBus(), which cannot
            # be replaced). BUS_SYSTEM honours DBUS_SYSTEM_BUS_ADDRESS, which bgworkerd sets for
            # its workers when it runs on another bus than the system one.
            bus = dbus.bus.BusConnection(dbus.bus.BUS_SYSTEM)
        except dbus.DBusException as error:
            log("warning" if self.failures == 0 else "debug", f"cannot connect to the bus: {error}")
            self.retry_later()
            return False
        bus.set_exit_on_disconnect(False)
        bus.add_signal_receiver(self.lost, signal_name="Disconnected",
                                dbus_interface="org.freedesktop.DBus.Local", path="/org/freedesktop/DBus/Local")
        # Subscribe first, read second, so that no change in between is lost. With a well-known
        # bus_name, dbus-python follows the name's owner and delivers only what the owner sends.
        bus.add_signal_receiver(self.properties_changed, signal_name="PropertiesChanged",
                                dbus_interface=PROPERTIES, bus_name=SERVICE, path=PATH, arg0=INTERFACE,
                                sender_keyword="sender")
        # Called with the owner now, and at every change ("" when the name has none).
        bus.watch_name_owner(SERVICE, self.owner_changed)
        self.bus = bus
        self.connected_at = time.monotonic()
        log("info", f"connected to the bus as {bus.get_unique_name()}")
        return False  # a GLib timeout callback: do not repeat

    def owner_changed(self, owner):
        if not owner:
            log("info", f"{SERVICE} is not on the bus; log level stays {level}")
            return
        self.bus.call_async(owner, PATH, PROPERTIES, "Get", "ss", (INTERFACE, PROPERTY),
                            reply_handler=lambda value: self.level_read(owner, value),
                            error_handler=lambda error: log("warning", f"cannot read {PROPERTY} from {owner}: {error}"))

    def level_read(self, owner, value):
        set_level(str(value), owner)
        log("info", f"following {SERVICE} at {owner}; log level {level}")

    def properties_changed(self, interface, changed, invalidated, sender=None):
        if PROPERTY in changed:
            set_level(str(changed[PROPERTY]), sender)
        elif PROPERTY in invalidated:
            self.owner_changed(sender)

    def lost(self, *args):
        log("warning", "lost the bus connection; opening a new one")
        self.bus = None  # dropped: a libdbus connection that has ended stays ended
        # A connection that lasted resets the delay; one that fails at once keeps doubling it.
        if time.monotonic() - self.connected_at >= 10:
            self.failures = 0
        self.retry_later()

    def retry_later(self):
        delay = min(0.1 * 2 ** self.failures, 5.0) * (1 + random.random() / 4)
        self.failures += 1
        GLib.timeout_add(int(delay * 1000), self.connect)


def main():
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    loop = GLib.MainLoop()
    interval = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    log("info", f"{name} starting: every {interval}s, log level {level}")
    cycle = 0

    def work():
        nonlocal cycle
        cycle += 1
        log("debug", f"cycle {cycle}: working")
        log("info", f"cycle {cycle}: work done")
        return True  # repeat

    def stop():
        log("info", "SIGTERM received; stopping")
        loop.quit()
        return False

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, stop)
    DaemonFollower()
    work()
    GLib.timeout_add(int(interval * 1000), work)
    loop.run()
    log("info", "stopped")


if __name__ == "__main__":
    main()
