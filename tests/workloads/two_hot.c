/* Two hot functions doing identical work per call in a 3:1 ratio, for argv[1] seconds, and on until the process has
 * had argv[2] seconds of CPU when given (a loaded machine gives it a fraction of the clock).
 * Built by the tests with frame pointers so any frame-pointer unwinder sees main above them.
 * Each call runs for milliseconds, several sampling periods even at ~1 kHz: with calls shorter than
 * one period (0.6 ms and 0.2 ms, as this once was) the cpu-clock samples read hot_a:hot_b as 3.2-3.3
 * over 20 s at 997 Hz instead of 3.0-3.05, enough to fail a 10% check now and then. */
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;

__attribute__((noinline)) void hot_a(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) sink += i * i;
}

__attribute__((noinline)) void hot_b(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) sink += i * i;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 5.0, end = now() + secs, min_cpu = argc > 2 ? atof(argv[2]) : 0.0;
    while (now() < end || cpu() < min_cpu) {
        hot_a(3000000);
        hot_b(1000000);
    }
    return 0;
}
