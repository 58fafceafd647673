/* A short-lived busy process with stacks several calls deep, for bench/agent_overhead.py --churn.
 * Usage: deep_calls SECONDS SEED. Burns CPU for SECONDS in a call tree whose depth and leaves
 * depend on SEED (each leaf a different function, each level a different caller), so processes
 * started with different seeds have different stacks. Built with frame pointers. */
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline)) void leaf_mul(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) sink += i * i;
}

__attribute__((noinline)) void leaf_xor(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) sink ^= i << (i & 7);
}

__attribute__((noinline)) void leaf_div(unsigned long n) {
    for (unsigned long i = 1; i < n; i++) sink += 1000003UL / i;
}

typedef void (*leaf_fn)(unsigned long);
static leaf_fn leaves[] = {leaf_mul, leaf_xor, leaf_div};

__attribute__((noinline)) void level(int depth, unsigned seed, unsigned long n);

__attribute__((noinline)) void level_a(int depth, unsigned seed, unsigned long n) {
    level(depth - 1, seed / 3, n);
    sink++;
}

__attribute__((noinline)) void level_b(int depth, unsigned seed, unsigned long n) {
    level(depth - 1, seed / 3, n);
    sink += 2;
}

__attribute__((noinline)) void level_c(int depth, unsigned seed, unsigned long n) {
    level(depth - 1, seed / 3, n);
    sink += 3;
}

__attribute__((noinline)) void level(int depth, unsigned seed, unsigned long n) {
    if (depth <= 0) {
        leaves[seed % 3](n);
        return;
    }
    switch (seed % 3) {
    case 0: level_a(depth, seed, n); break;
    case 1: level_b(depth, seed, n); break;
    default: level_c(depth, seed, n);
    }
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 0.5, end = now() + secs;
    unsigned seed = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 1;
    int round = 0;
    while (now() < end) {
        /* each round walks a different branch of the tree: several distinct stacks per process */
        unsigned s = seed * 2654435761u + (unsigned)round++;
        level(4 + (int)(s % 9), s, 20000);
    }
    return 0;
}
