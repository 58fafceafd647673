/* A short busy process whose hot chain passes through libc (qsort's callback), for
 * tests/test_unwind_first_library_bpf.py:
 *   main -> run_chain -> level1 -> level2 -> level3 -> qsort (libc, no frame pointers) -> compare -> leaf_work
 * Built -O2 without frame pointers: only unwind rows give any caller, and the walk must cross libc to reach
 * level3. It prints main's runtime address first (and lib_sort's after it), so a test can place its samples after
 * it has exited.
 * Built -DVIA_LIB (with spawn_qsort_lib.c as a shared library), level3 calls lib_sort -> lib_level -> qsort: the
 * walk crosses two libraries (libc, then that one) on its way from the leaf to main.
 * Usage: spawn_qsort SECONDS (of its own CPU time: on a loaded machine each run still gets as many samples) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;
#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory") /* keeps each caller's frame on the stack */

KEEP __attribute__((optimize("omit-frame-pointer"))) unsigned long leaf_work(unsigned long x) {
    for (int i = 0; i < 4000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

KEEP int compare(const void *a, const void *b) {
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    sink += leaf_work(x ^ y);
    NO_SIBLING_CALL;
    return (x > y) - (x < y);
}

#ifdef VIA_LIB
void lib_sort(unsigned long *v, int n, int (*cmp)(const void *, const void *));
KEEP void level3(unsigned long *v, int n) { lib_sort(v, n, compare); NO_SIBLING_CALL; }
#else
KEEP void level3(unsigned long *v, int n) { qsort(v, n, sizeof *v, compare); NO_SIBLING_CALL; }
#endif
KEEP void level2(unsigned long *v, int n) { level3(v, n); NO_SIBLING_CALL; }
KEEP void level1(unsigned long *v, int n) { level2(v, n); NO_SIBLING_CALL; }

KEEP void run_chain(void) {
    unsigned long v[64];
    for (int i = 0; i < 64; i++) v[i] = (unsigned long)rand();
    level1(v, 64);
    NO_SIBLING_CALL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double deadline = now() + (argc > 1 ? atof(argv[1]) : 0.08);
#ifdef VIA_LIB
    printf("%lx %lx\n", (unsigned long)&main, (unsigned long)&lib_sort);  /* and where the library's code is */
#else
    printf("%lx\n", (unsigned long)&main);
#endif
    fflush(stdout);
    while (now() < deadline)
        run_chain();
    return 0;
}
