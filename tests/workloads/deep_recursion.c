/* Native recursion of a chosen depth (tests/test_fidelity_deep_stacks_bpf.py): main -> descend x DEPTH ->
 * spin, where spin burns CPU for ever. Deeper than the kernel's 127 user frames, the stack is cut and its
 * root must be marked as cut, not shown as if `descend` were called from nowhere.
 * Usage: deep_recursion DEPTH */
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned long sink;

__attribute__((noinline)) void spin(void) {
    for (;;)
        for (unsigned long i = 0; i < 100000; i++)
            sink += i * i;
}

__attribute__((noinline)) unsigned long descend(int n) {
    if (n == 0) {
        puts("ready");
        fflush(stdout);
        spin();
    }
    unsigned long r = descend(n - 1);  /* not a tail call: the frame stays on the stack */
    __asm__ volatile("" ::: "memory");
    sink ^= r;
    return r ^ (unsigned long)n;
}

int main(int argc, char **argv) {
    return (int)descend(argc > 1 ? atoi(argv[1]) : 10);
}
