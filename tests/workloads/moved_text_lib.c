/* moved_text's library for its dlmopen mode: lib_run -> lib_level -> qsort (this namespace's libc) -> lib_compare
 * -> lib_leaf until the deadline (CLOCK_MONOTONIC seconds). */
#include <stdlib.h>
#include <time.h>

volatile unsigned long lib_sink;
#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")

KEEP unsigned long lib_leaf(unsigned long x) {
    for (int i = 0; i < 4000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

KEEP int lib_compare(const void *a, const void *b) {
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    lib_sink += lib_leaf(x ^ y);
    NO_SIBLING_CALL;
    return (x > y) - (x < y);
}

KEEP void lib_level(void) {
    unsigned long v[64];
    for (int i = 0; i < 64; i++) v[i] = (unsigned long)rand();
    qsort(v, 64, sizeof *v, lib_compare);
    NO_SIBLING_CALL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

KEEP void lib_run(double deadline) {
    do lib_level(); while (now() < deadline);
    NO_SIBLING_CALL;
}
