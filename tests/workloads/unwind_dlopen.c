/* dlopen after start: the native unwinder's tables must follow the new mapping (the walker marks
 * the process stale when an address falls outside its known mappings; the next drain re-reads it).
 * Usage: unwind_dlopen LIBRARY DELAY_SECONDS RUN_SECONDS [OTHER]; LIBRARY is unwind_dlopen_lib.c built -O2 -shared,
 * OTHER the same with -DOTHER. A SIGUSR1 during the delay ends it early (a test dlopens once its sampler is up,
 * whatever the load); RUN_SECONDS count from the dlopen. With OTHER, a SIGUSR1 after the dlopen dlcloses the
 * library and dlopens OTHER, which the kernel places where the first one was: nothing falls outside the known
 * mappings, the mapping array is wrong for that range. */
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

static volatile sig_atomic_t signals;

static void on_usr1(int sig) { (void)sig; signals++; }

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    signal(SIGUSR1, on_usr1);
    double start = now(), delay = atof(argv[2]), run = atof(argv[3]);
    volatile unsigned long spin = 0;
    while (!signals && now() < start + delay) spin++;
    double opened = now();
    int seen = signals;
    unsigned long x = 1;
    for (int i = 1; i <= 4 && i < argc; i += 3) {
        void *lib = dlopen(argv[i], RTLD_NOW);
        if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        unsigned long (*entry)(unsigned long) = (unsigned long (*)(unsigned long))dlsym(lib, "lib_entry");
        if (!entry) return 1;
        while (now() < opened + run && !(i == 1 && argc > 4 && signals > seen)) x = entry(x);
        dlclose(lib);
    }
    return (int)(x & 1) * 0;
}
