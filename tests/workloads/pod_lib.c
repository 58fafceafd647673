/* The shared library of tests/workloads/pod_chain.c, built by the test: pod_sort -> pod_level -> qsort
 * -> pod_compare, which calls the program's leaf back. */
#include <stdlib.h>

static unsigned long (*leaf_fn)(unsigned long);
static volatile unsigned long sink;
#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")

KEEP int pod_compare(const void *a, const void *b) {
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    sink += leaf_fn(x ^ y);
    NO_SIBLING_CALL;
    return (x > y) - (x < y);
}

KEEP void pod_level(unsigned long *v, int n) { qsort(v, n, sizeof *v, pod_compare); NO_SIBLING_CALL; }

KEEP void pod_sort(unsigned long *v, int n, unsigned long (*leaf)(unsigned long)) {
    leaf_fn = leaf;
    pod_level(v, n);
    NO_SIBLING_CALL;
}
