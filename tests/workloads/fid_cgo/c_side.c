/* fid_cgo's C side: c_leaf spins; c_outer -> c_mid -> goCallback (Go) for the callback mode. */
#include <stdint.h>
#include "_cgo_export.h"
#define KEEP __attribute__((noinline, noclone))

KEEP uint64_t c_leaf(uint64_t x) {
    for (int i = 0; i < 20000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

KEEP uint64_t c_mid(uint64_t x) {
    uint64_t r = goCallback(x);
    __asm__ volatile("" ::: "memory");
    return r + 1;
}

uint64_t c_outer(uint64_t x) {
    uint64_t r = c_mid(x);
    __asm__ volatile("" ::: "memory");
    return r + 1;
}
