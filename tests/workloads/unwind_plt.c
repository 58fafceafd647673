/* Samples whose leaf is a PLT stub (tests/test_unwind_bpf.py): main -> run_plt calls lib_tiny, a
 * one-instruction function in a shared library, through the PLT a million times per round, so
 * ~1/4 of the samples land in the stub itself (`jmp *GOT`, or `endbr64; jmp *GOT` in .plt.sec with
 * -fcf-protection -z ibtplt), where no frame exists and only the PLT's CFI gives the caller.
 * Usage: unwind_plt SECONDS */
#include <stdlib.h>
#include <time.h>

unsigned long lib_tiny(unsigned long x);
volatile unsigned long sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline, noclone)) void run_plt(double deadline) {
    unsigned long x = 0;
    while (now() < deadline)
        for (int i = 0; i < 1000000; i++) x = lib_tiny(x);
    sink = x;
    __asm__ volatile("" ::: "memory"); /* keeps run_plt's frame: no sibling call */
}

int main(int argc, char **argv) {
    run_plt(now() + (argc > 1 ? atof(argv[1]) : 10.0));
    return 0;
}
