/* A known call chain for the native unwinder's tests (tests/test_unwind_bpf.py), built with and
 * without frame pointers:
 *   main -> run_chain -> level1 -> level2 -> level3 -> qsort (libc, no frame pointers) -> compare -> leaf_work
 * leaf_work never sets up a frame (even in a -fno-omit-frame-pointer build), so only unwind rows
 * give its caller. Modes: "chain" (the main thread), "thread" (a pthread running the chain: its
 * stack ends in clone3), "signal" (the chain runs in a SIGALRM handler, through __restore_rt),
 * "syscall" (main -> in_syscalls -> getppid: samples taken in the kernel, user registers from
 * the task), "deep" (recurse 300 frames deep, past the 127-frame limit, then spin).
 * Usage: unwind_chain MODE SECONDS [cpu]; with "cpu", SECONDS of the process's CPU time rather than of the clock
 * (a loaded machine stretches the wall time, so the share of samples taken before the profiler's tables came stays
 * what the profiler's work costs, not what the load makes of it; a clock_gettime syscall per run_chain). */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

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

KEEP void level3(unsigned long *v, int n) { qsort(v, n, sizeof *v, compare); NO_SIBLING_CALL; }
KEEP void level2(unsigned long *v, int n) { level3(v, n); NO_SIBLING_CALL; }
KEEP void level1(unsigned long *v, int n) { level2(v, n); NO_SIBLING_CALL; }

KEEP void run_chain(void) {
    unsigned long v[64];
    for (int i = 0; i < 64; i++) v[i] = (unsigned long)rand();
    level1(v, 64);
    NO_SIBLING_CALL;
}

static double deadline;
static clockid_t clock_id = CLOCK_MONOTONIC;

static double now(void) {
    struct timespec ts;
    clock_gettime(clock_id, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

KEEP void *worker(void *arg) {
    (void)arg;
    while (now() < deadline) run_chain();
    return NULL;
}

KEEP void on_alarm(int sig) {
    (void)sig;
    for (int i = 0; i < 3; i++) run_chain(); /* a few ms of the 10 ms period: main still runs */
    NO_SIBLING_CALL;
}

KEEP void wait_in_main(void) {
    while (now() < deadline) /* interrupted by SIGALRM; the handler does the work */
        for (int i = 0; i < 1000000; i++) sink++;
}

KEEP void in_syscalls(void) {
    while (now() < deadline)
        for (int i = 0; i < 1000; i++) syscall(SYS_getppid);
    NO_SIBLING_CALL;
}

KEEP unsigned long recurse(int depth) {
    if (depth == 0) {
        while (now() < deadline) sink = leaf_work(sink);
        return sink;
    }
    unsigned long r = recurse(depth - 1) + 1;
    NO_SIBLING_CALL;
    return r;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "chain";
    if (argc > 3 && strcmp(argv[3], "cpu") == 0)
        clock_id = CLOCK_PROCESS_CPUTIME_ID;
    deadline = now() + (argc > 2 ? atof(argv[2]) : 5.0);
    if (strcmp(mode, "thread") == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) return 2;
        pthread_join(t, NULL);
    } else if (strcmp(mode, "signal") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {{0, 10000}, {0, 10000}};
        setitimer(ITIMER_REAL, &it, NULL);
        wait_in_main();
    } else if (strcmp(mode, "syscall") == 0) {
        in_syscalls();
    } else if (strcmp(mode, "deep") == 0) {
        recurse(300);
    } else {
        while (now() < deadline) run_chain();
    }
    return 0;
}
