/* dlopen after start: the native unwinder's tables must follow the new mapping (the walker marks
 * the process stale when an address falls outside its known mappings; the next drain re-reads it).
 * Usage: unwind_dlopen LIBRARY DELAY_SECONDS RUN_SECONDS; LIBRARY is unwind_dlopen_lib.c built -O2 -shared.
 * SIGUSR1 ends the delay early (a test dlopens once its sampler is up, whatever the load); RUN_SECONDS count
 * from the dlopen. */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static volatile sig_atomic_t go;

static void on_usr1(int sig) { (void)sig; go = 1; }

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    signal(SIGUSR1, on_usr1);
    double start = now(), delay = atof(argv[2]), run = atof(argv[3]);
    volatile unsigned long spin = 0;
    while (!go && now() < start + delay) spin++;
    double opened = now();
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    unsigned long (*entry)(unsigned long) = (unsigned long (*)(unsigned long))dlsym(lib, "lib_entry");
    if (!entry) return 1;
    unsigned long x = 1;
    while (now() < opened + run) x = entry(x);
    return (int)(x & 1) * 0;
}
