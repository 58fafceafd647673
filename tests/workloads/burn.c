// Sampler test workload: THREADS threads spend CPU in hot_a and hot_b in a 3:1 ratio for SECONDS, and on
// until the process has had MIN_CPU seconds of CPU when given (a loaded machine gives it a fraction of that).
// Usage: burn SECONDS THREADS [MIN_CPU]. It prints "ready" and blocks until a byte arrives on stdin, so the test
// can read its maps, move it into a cgroup and attach the sampler before any CPU is burnt.
// Built by tests/test_sampler_bpf.py with -O0 -fno-omit-frame-pointer, so frame-pointer unwinding works.
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define UNIT 100000L

static volatile sig_atomic_t stop;
static double min_cpu;

static void on_alarm(int sig) { (void)sig; stop = 1; }

// Both hot functions run the same loop, so their 3:1 share of CPU does not depend on code alignment;
// a profile tells them apart by the caller frame above `spin`.
__attribute__((noinline)) void spin(long n) {
    for (volatile long i = 0; i < n; i++) {
    }
}

__attribute__((noinline)) void hot_a(void) { spin(3 * UNIT); }

__attribute__((noinline)) void hot_b(void) { spin(UNIT); }

// read only once SECONDS have passed: the samples before then are all in the hot functions
static int short_of_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9 < min_cpu;
}

__attribute__((noinline)) void *worker(void *arg) {
    while (!stop || (min_cpu > 0 && short_of_cpu())) {
        hot_a();
        hot_b();
    }
    return arg;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 4.0;
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    min_cpu = argc > 3 ? atof(argv[3]) : 0;
    char go;
    if (threads < 1 || threads > 64)
        return 2;
    if (write(1, "ready\n", 6) != 6 || read(0, &go, 1) != 1)
        return 3;
    signal(SIGALRM, on_alarm);
    struct itimerval timer = {.it_value = {.tv_sec = (long)seconds,
                                           .tv_usec = (long)((seconds - (long)seconds) * 1e6)}};
    setitimer(ITIMER_REAL, &timer, NULL);
    pthread_t others[64];
    for (int i = 1; i < threads; i++)
        pthread_create(&others[i], NULL, worker, NULL);
    worker(NULL);
    for (int i = 1; i < threads; i++)
        pthread_join(others[i], NULL);
    return 0;
}
