// What building a signal costs with libdbus' iterators, against reading the same bytes back
// (dbus_message_demarshal, then dbus_message_copy for serial 0): the measure behind
// OutgoingSignal.wireMessage (docs/dbus-layer.md, "Sending signals").
//   cc -O2 scripts/bench/libdbus-signal-cost.c -o /tmp/libdbus-signal-cost $(pkg-config --cflags --libs dbus-1)
//   /tmp/libdbus-signal-cost
#include <dbus/dbus.h>
#include <stdio.h>
#include <time.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

// n uint32 values, or (n < 0) a PropertiesChanged of five string properties.
static DBusMessage *build(int n) {
    DBusMessageIter it;
    if (n >= 0) {
        DBusMessage *m = dbus_message_new_signal("/org/example/BgWorker", "org.example.BgWorker.Manager", "WorkerStateChanged");
        dbus_message_iter_init_append(m, &it);
        for (int k = 0; k < n; k++) {
            dbus_uint32_t v = 12345;
            dbus_message_iter_append_basic(&it, DBUS_TYPE_UINT32, &v);
        }
        return m;
    }
    DBusMessage *m = dbus_message_new_signal("/org/example/BgWorker/worker/cycle", "org.freedesktop.DBus.Properties", "PropertiesChanged");
    DBusMessageIter dict, entry, variant, array;
    dbus_message_iter_init_append(m, &it);
    const char *interface = "org.example.BgWorker.Worker", *value = "running";
    const char *names[] = {"State", "Pid", "StateChangedAt", "StateReason", "ReadyAt"};
    dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &interface);
    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
    for (int k = 0; k < 5; k++) {
        dbus_message_iter_open_container(&dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry);
        dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &names[k]);
        dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "s", &variant);
        dbus_message_iter_append_basic(&variant, DBUS_TYPE_STRING, &value);
        dbus_message_iter_close_container(&entry, &variant);
        dbus_message_iter_close_container(&dict, &entry);
    }
    dbus_message_iter_close_container(&it, &dict);
    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "s", &array);
    dbus_message_iter_close_container(&it, &array);
    return m;
}

int main(void) {
    const int rounds = 200000;
    for (int n = -1; n <= 4; n++) {
        double start = now_ns();
        for (int i = 0; i < rounds; i++) dbus_message_unref(build(n));
        double iterators = (now_ns() - start) / rounds / 1000;
        DBusMessage *m = build(n);
        dbus_message_set_serial(m, 1);
        char *bytes;
        int length;
        if (!dbus_message_marshal(m, &bytes, &length)) return 1;
        start = now_ns();
        for (int i = 0; i < rounds; i++) {
            DBusMessage *read = dbus_message_demarshal(bytes, length, NULL);
            DBusMessage *copy = dbus_message_copy(read);
            dbus_message_unref(read);
            dbus_message_unref(copy);
        }
        double readBack = (now_ns() - start) / rounds / 1000;
        if (n < 0) printf("PropertiesChanged of 5: ");
        else printf("%d uint32: ", n);
        printf("iterators %.2f us, read back %.2f us\n", iterators, readBack);
        dbus_free(bytes);
        dbus_message_unref(m);
    }
    return 0;
}
