/* gcc -fsplit-stack: recursion through 2000-byte frames that outgrows its stack segments, so __morestack runs
 * the deeper calls on new segments (bench/unwind.py --wide, docs/benchmarks.md "Stop 23 fid23").
 *   main -> recurse x41 (with __morestack frames between segments) -> leaf_work
 * Usage: split_stack SECONDS */
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;
#define KEEP __attribute__((noinline, noclone))

KEEP unsigned long leaf_work(unsigned long x) {
    for (int i = 0; i < 4000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

static double deadline;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

KEEP unsigned long recurse(int depth) {
    volatile char buf[2000];
    buf[0] = (char)depth;
    if (depth == 0) {
        while (now() < deadline) sink = leaf_work(sink);
        return sink;
    }
    unsigned long r = recurse(depth - 1) + (unsigned long)buf[0];
    __asm__ volatile("" ::: "memory");
    return r;
}

int main(int argc, char **argv) {
    deadline = now() + (argc > 1 ? atof(argv[1]) : 5.0);
    recurse(40);
    return 0;
}
