/* C functions whose frame rules are not "CFA = rsp + n", each hot under a known chain from main, for
 * tests/test_unwind_wide_bpf.py and bench/unwind.py --wide (built -O2 without frame pointers):
 *   alloca:  main -> run_alloca -> with_alloca (a variable-sized alloca: CFA = rbp + 16) -> frame_leaf;
 *            with_alloca also spins in its own body
 *   realign: main -> run_realign -> with_realign (a 64-byte aligned local: the stack is realigned, CFA
 *            from rbp, or through DRAP's DW_CFA_def_cfa_expression when built -mstackrealign/-mavx)
 *            -> frame_leaf; with_realign also spins in its own body
 *   drap:    main -> run_drap -> with_drap (an aligned local and an alloca: gcc realigns through a DRAP
 *            register, CFA = *(rbp - 8) as a DW_CFA_def_cfa_expression) -> frame_leaf, and its own body
 * Usage: wide_frames MODE SECONDS */
#include <alloca.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile unsigned long sink;
#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")

KEEP unsigned long frame_leaf(unsigned long x) {
    for (int i = 0; i < 3000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

static unsigned long spin_here(volatile unsigned long *p, int n) {
    unsigned long x = p[0];
    for (int i = 0; i < n; i++) x = x * 2862933555777941757UL + 3037000493UL;
    return x;
}

KEEP unsigned long with_alloca(int n) {
    volatile unsigned long *buf = alloca((size_t)n * sizeof *buf);
    for (int i = 0; i < n; i++) buf[i] = (unsigned long)i;
    unsigned long r = frame_leaf(buf[n - 1]) + spin_here(buf, 3000);
    NO_SIBLING_CALL;
    return r + buf[n / 2];
}

KEEP unsigned long with_realign(unsigned long seed) {
    volatile unsigned long v[8] __attribute__((aligned(64)));
    for (int i = 0; i < 8; i++) v[i] = seed + (unsigned long)i;
    unsigned long r = frame_leaf(v[3]) + spin_here(v, 3000);
    NO_SIBLING_CALL;
    return r + v[7];
}

KEEP unsigned long with_drap(int n, unsigned long seed) {
    volatile unsigned long v[8] __attribute__((aligned(64)));
    volatile unsigned long *buf = alloca((size_t)n * sizeof *buf);
    for (int i = 0; i < 8; i++) v[i] = seed + (unsigned long)i;
    for (int i = 0; i < n; i++) buf[i] = v[i & 7];
    unsigned long r = frame_leaf(buf[n - 1]) + spin_here(v, 3000);
    NO_SIBLING_CALL;
    return r + buf[0];
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static volatile int size = 37;

KEEP void run_alloca(double until) {
    while (now() < until) sink += with_alloca(size + (int)(sink & 7));
    NO_SIBLING_CALL;
}

KEEP void run_realign(double until) {
    while (now() < until) sink += with_realign(sink);
    NO_SIBLING_CALL;
}

KEEP void run_drap(double until) {
    while (now() < until) sink += with_drap(size + (int)(sink & 7), sink);
    NO_SIBLING_CALL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    double until = now() + atof(argv[2]);
    if (!strcmp(argv[1], "alloca")) run_alloca(until);
    else if (!strcmp(argv[1], "realign")) run_realign(until);
    else if (!strcmp(argv[1], "drap")) run_drap(until);
    else return 2;
    return (int)(sink & 1);
}
