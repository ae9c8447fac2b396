// ThreadSanitizer builds only (scripts/sanitize): makes the contended path of Swift's
// Synchronization.Mutex visible to TSan. In Swift 6.3 on Linux, Mutex's lock and unlock are
// inlined atomics on the lock word (instrumented in our code, so TSan sees them), but when the
// lock is contended they call _MutexHandle._lockSlow / _unlockSlow in libswiftSynchronization.so,
// which take and hand over the lock in the kernel (futex PI) where TSan sees nothing: it then
// reports the Mutex's own critical sections as racing. These definitions take the place of those
// two functions in our executables (the static linker binds our calls to them), call the library's
// own, and tell TSan what they did: acquire after the lock is taken, release before it is handed
// over, at the lock word's address, where the fast path's atomics synchronise too.
// docs/sanitizers.md ("Mutex") has the proof; the swiftcall signatures are the library's
// (selfId in the first argument register, the handle's address as the Swift self, r13).
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>

void __tsan_acquire(void *address);
void __tsan_release(void *address);

#define LOCK_SLOW "$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF"
#define UNLOCK_SLOW "$s15Synchronization12_MutexHandleV11_unlockSlowyyF"

typedef __attribute__((swiftcall)) void (*bgw_lock_slow)(uint32_t self_id, void *handle __attribute__((swift_context)));
typedef __attribute__((swiftcall)) void (*bgw_unlock_slow)(void *handle __attribute__((swift_context)));

// The library's functions, looked up once (any thread may be first: atomics, same value).
static void *library_function(void **cache, const char *name) {
    void *f = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
    if (!f) {
        f = dlsym(RTLD_NEXT, name);
        __atomic_store_n(cache, f, __ATOMIC_RELEASE);
    }
    return f;
}

__attribute__((swiftcall)) void bgw_mutex_lock_slow(uint32_t self_id, void *handle __attribute__((swift_context)))
    __asm__(LOCK_SLOW);
__attribute__((swiftcall)) void bgw_mutex_lock_slow(uint32_t self_id, void *handle __attribute__((swift_context))) {
    static void *cache;
    ((bgw_lock_slow)library_function(&cache, LOCK_SLOW))(self_id, handle);
    __tsan_acquire(handle);
}

__attribute__((swiftcall)) void bgw_mutex_unlock_slow(void *handle __attribute__((swift_context)))
    __asm__(UNLOCK_SLOW);
__attribute__((swiftcall)) void bgw_mutex_unlock_slow(void *handle __attribute__((swift_context))) {
    static void *cache;
    __tsan_release(handle);
    ((bgw_unlock_slow)library_function(&cache, UNLOCK_SLOW))(handle);
}
#endif
#endif
