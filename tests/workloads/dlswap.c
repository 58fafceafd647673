/* dlopen one library, run it PERIOD seconds, dlclose it, dlopen the other: both load at the same address, so the
 * second's code sits where the first's was (bench/unwind.py --wide, docs/benchmarks.md "Stop 23 fid23").
 *   main -> run_lib -> lib_entry -> a_middle -> a_leaf, then ... -> b_middle -> b_leaf, in turn
 * Usage: dlswap LIB_A LIB_B PERIOD SECONDS; the libraries are dlswap_lib.c built -shared, B with -DVARIANT_B. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) unsigned long run_lib(const char *path, double until) {
    void *lib = dlopen(path, RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        exit(1);
    }
    unsigned long (*entry)(unsigned long) = (unsigned long (*)(unsigned long))dlsym(lib, "lib_entry");
    unsigned long x = 1;
    while (now() < until) x = entry(x);
    dlclose(lib);
    __asm__ volatile("" ::: "memory");
    return x;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    double end = now() + atof(argv[4]), period = atof(argv[3]);
    unsigned long x = 0;
    for (int i = 0; now() < end; i++) x += run_lib(argv[1 + (i & 1)], now() + period);
    return (int)(x & 1) * 0;
}
