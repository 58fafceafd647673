/* Spins in anonymous executable memory, as JIT-compiled code runs: the table walker finds the sampled
 * address outside every mapping the loader gave the process and marks it stale (bpf/native_unwind.bpf.h).
 * Usage: jit_spin SECONDS; the code is a call into the page and a loop there that returns after SECONDS. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double end = now() + (argc > 1 ? atof(argv[1]) : 30);
    /* mov ecx, 0x1000000; loop: dec ecx; jnz loop; ret  (~16M iterations a call) */
    static const unsigned char code[] = {0xb9, 0x00, 0x00, 0x00, 0x01, 0xff, 0xc9, 0x75, 0xfc, 0xc3};
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return 1;
    memcpy(page, code, sizeof(code));
    void (*spin)(void) = (void (*)(void))page;
    while (now() < end) spin();
    return 0;
}
