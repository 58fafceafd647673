/* dlopen after start: the native unwinder's tables must follow the new mapping (the walker marks
 * the process stale when an address falls outside its known mappings; the next drain re-reads it).
 * Usage: unwind_dlopen LIBRARY DELAY_SECONDS RUN_SECONDS; LIBRARY is unwind_dlopen_lib.c built -O2 -shared. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    double start = now(), delay = atof(argv[2]), run = atof(argv[3]);
    volatile unsigned long spin = 0;
    while (now() < start + delay) spin++;
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    unsigned long (*entry)(unsigned long) = (unsigned long (*)(unsigned long))dlsym(lib, "lib_entry");
    if (!entry) return 1;
    unsigned long x = 1;
    while (now() < start + delay + run) x = entry(x);
    return (int)(x & 1) * 0;
}
