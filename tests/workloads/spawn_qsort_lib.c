/* The shared library of spawn_qsort.c built -DVIA_LIB (tests/test_unwind_second_library_bpf.py): level3 calls
 * lib_sort -> lib_level -> qsort (libc), whose callback is the program's compare. A walk from the leaf crosses
 * libc and then this library: two libraries. Built -O2 without frame pointers, like libc. */
#include <stdlib.h>

#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")

KEEP void lib_level(unsigned long *v, int n, int (*cmp)(const void *, const void *)) {
    qsort(v, n, sizeof *v, cmp);
    NO_SIBLING_CALL;
}

KEEP void lib_sort(unsigned long *v, int n, int (*cmp)(const void *, const void *)) {
    lib_level(v, n, cmp);
    NO_SIBLING_CALL;
}
