/* LD_PRELOAD shim for tests/test_no_alloc.py: counts calls to the C allocator (C++'s operator new
 * ends in malloc too) while counting is switched on, so a test can prove a code path allocates
 * nothing. Forwards to the real functions found with dlsym(RTLD_NEXT). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

static long count;
static int on;
static void* (*real_malloc)(size_t);
static void* (*real_calloc)(size_t, size_t);
static void* (*real_realloc)(void*, size_t);

void malloc_count_start(void) { count = 0; on = 1; }
long malloc_count_stop(void) { on = 0; return count; }

void* malloc(size_t n) {
    if (!real_malloc) real_malloc = (void* (*)(size_t))dlsym(RTLD_NEXT, "malloc");
    if (on) __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
    return real_malloc(n);
}

/* dlsym itself may calloc before real_calloc is known: serve that from a static buffer. */
static char early[4096];
static size_t early_used;
void* calloc(size_t n, size_t size) {
    if (!real_calloc) {
        static int resolving;
        if (resolving) {
            void* p = early + early_used;
            early_used += (n * size + 15) & ~(size_t)15;
            return p;
        }
        resolving = 1;
        real_calloc = (void* (*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
        resolving = 0;
    }
    if (on) __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
    return real_calloc(n, size);
}

void* realloc(void* p, size_t n) {
    if (!real_realloc) real_realloc = (void* (*)(void*, size_t))dlsym(RTLD_NEXT, "realloc");
    if (on) __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
    return real_realloc(p, n);
}
