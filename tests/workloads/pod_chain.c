/* A pod-shaped native program (tests/test_fidelity_containers_bpf.py): its own shared library and the
 * C library it runs on come from the container's filesystem, not the host's. Known chain:
 *   main -> run_pod -> pod_sort (libpodlib.so) -> pod_level (libpodlib.so) -> qsort (libc)
 *        -> pod_compare (libpodlib.so) -> leaf_work (this program, a frameless leaf)
 * Built -O2 without frame pointers, so every caller comes from unwind tables of three files.
 * After SIGUSR1 the leaf is settled_work (the same work under its own name): a test that sends it once the
 * agent has the process's tables tells the samples taken after that from the first ones.
 * Usage: pod_chain SECONDS */
#include <signal.h>
#include <stdlib.h>
#include <time.h>

void pod_sort(unsigned long *v, int n, unsigned long (*leaf)(unsigned long));
volatile unsigned long sink;

__attribute__((noinline, noclone, optimize("omit-frame-pointer"))) unsigned long leaf_work(unsigned long x) {
    for (int i = 0; i < 4000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

/* another multiplier, so the compiler cannot fold it into leaf_work */
__attribute__((noinline, noclone, optimize("omit-frame-pointer"))) unsigned long settled_work(unsigned long x) {
    for (int i = 0; i < 4000; i++)
        x = x * 2862933555777941757UL + 3037000493UL;
    return x;
}

static volatile sig_atomic_t settled;

static void on_usr1(int sig) {
    (void)sig;
    settled = 1;
}

__attribute__((noinline, noclone)) void run_pod(void) {
    unsigned long v[64];
    for (int i = 0; i < 64; i++) v[i] = (unsigned long)rand();
    pod_sort(v, 64, settled ? settled_work : leaf_work);
    __asm__ volatile("" ::: "memory"); /* keeps run_pod's frame: no sibling call */
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double deadline = now() + (argc > 1 ? atof(argv[1]) : 5.0);
    signal(SIGUSR1, on_usr1);
    while (now() < deadline) run_pod();
    return 0;
}
