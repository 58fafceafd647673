/* A short busy process whose hot chain lives in the executable alone (no library frame between main and
 * the leaf), for tests/test_unwind_first_samples_bpf.py and bench/unwind_first_samples.py:
 *   main -> exe_run -> exe_level1 -> exe_level2 -> exe_leaf
 * Built -O2 without frame pointers: only unwind rows give any caller. It prints main's runtime address
 * first, so a test can place its samples after it has exited (PIE or not).
 * Usage: exe_chain SECONDS (of its own CPU time: on a loaded machine each run still gets as many samples) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;
#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")

KEEP __attribute__((optimize("omit-frame-pointer"))) unsigned long exe_leaf(unsigned long x) {
    for (int i = 0; i < 20000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

KEEP unsigned long exe_level2(unsigned long x) { unsigned long r = exe_leaf(x + 2); NO_SIBLING_CALL; return r + 1; }
KEEP unsigned long exe_level1(unsigned long x) { unsigned long r = exe_level2(x + 1); NO_SIBLING_CALL; return r + 1; }
KEEP void exe_run(unsigned long n) {
    for (unsigned long i = 0; i < n; i++)
        sink += exe_level1(i);
    NO_SIBLING_CALL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double deadline = now() + (argc > 1 ? atof(argv[1]) : 0.3);
    printf("%lx\n", (unsigned long)&main);
    fflush(stdout);
    while (now() < deadline)
        exe_run(100);  /* ~1 ms a round: clock_gettime is a rare leaf */
    return 0;
}
