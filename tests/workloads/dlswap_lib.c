/* The two libraries tests/workloads/dlswap.c swaps: lib_entry -> a_middle -> a_leaf, and with -DVARIANT_B
 * lib_entry -> b_middle -> b_leaf with other frame sizes (other CFI at the same offsets). */
#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")
#ifdef VARIANT_B
KEEP unsigned long pad_b(unsigned long x) { volatile char big[4000]; big[x & 4095] = 1; return big[0]; }
#define L(n) b_##n
#else
#define L(n) a_##n
#endif

KEEP unsigned long L(leaf)(unsigned long x) {
    for (int i = 0; i < 100000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

KEEP unsigned long L(middle)(unsigned long x) {
#ifdef VARIANT_B
    volatile char big[3000];
    big[x & 2047] = 1;
    x += big[5];
#endif
    x = L(leaf)(x) + 1;
    NO_SIBLING_CALL;
    return x;
}

unsigned long lib_entry(unsigned long x) {
#ifdef VARIANT_B
    volatile char big[5000];
    big[x & 4095] = 1;
    x += big[7];
#endif
    x = L(middle)(x) + 1;
    NO_SIBLING_CALL;
    return x;
}
