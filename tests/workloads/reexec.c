/* A process that execs its own binary again and again under the same comm (a daemon re-exec'ing its upgraded
 * binary, a python3 exec'ing python3): each image spins in main -> image_mid -> image_leaf for SECONDS, then
 * execs /proc/self/exe with COUNT - 1; the last image spins until killed. Every image is mapped at new
 * addresses (ASLR) under the same pid and comm (tests/test_unwind_exec_bpf.py). Built with gcc -O2.
 * Usage: reexec COUNT SECONDS */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory") /* keeps each caller's frame on the stack */

volatile unsigned long sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

KEEP void image_leaf(void) {
    unsigned long x = sink;
    for (int i = 0; i < 200000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    sink = x;
}

KEEP void image_mid(void) { image_leaf(); NO_SIBLING_CALL; }

int main(int argc, char **argv) {
    long count = argc > 1 ? atol(argv[1]) : 0;
    double seconds = argc > 2 ? atof(argv[2]) : 0.5;
    double until = now() + (count > 0 ? seconds : 1e9);
    while (now() < until)
        image_mid();
    char next[32], span[32];
    snprintf(next, sizeof next, "%ld", count - 1);
    snprintf(span, sizeof span, "%g", seconds);
    execl("/proc/self/exe", argv[0], next, span, (char *)0);
    return 1;
}
