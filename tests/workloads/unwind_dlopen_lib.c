/* The library tests/workloads/unwind_dlopen.c loads: lib_entry -> lib_middle -> lib_leaf (frameless); with
 * -DOTHER, lib_entry -> other_middle -> other_leaf after 8 KiB of other_pad: every address of the first build's
 * functions is inside other_pad in this one. */
#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")
#ifdef OTHER
KEEP unsigned long other_pad(unsigned long x) { __asm__ volatile(".skip 8192, 0x90"); return x + 1; }
#define lib_leaf other_leaf
#define lib_middle other_middle
#endif

KEEP unsigned long lib_leaf(unsigned long x) {
    for (int i = 0; i < 100000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

KEEP unsigned long lib_middle(unsigned long x) { x = lib_leaf(x) + 1; NO_SIBLING_CALL; return x; }

unsigned long lib_entry(unsigned long x) { x = lib_middle(x) + 1; NO_SIBLING_CALL; return x; }
