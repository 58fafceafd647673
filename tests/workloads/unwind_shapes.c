/* Function shapes the unwind-table tests look up by symbol: a frameless leaf, a big stack frame
 * (CFA offset past 8 KiB, still an s16), a huge one (past the s16 the table row holds), and a
 * call through the PLT. Built by tests/test_unwind_tables.py with and without frame pointers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) int leaf(int x) { return x * 3 + 1; }

__attribute__((noinline)) int big_frame(int n) {
    volatile char buf[8192];
    for (int i = 0; i < n && i < (int)sizeof buf; i++) buf[i] = (char)i;
    return buf[n % sizeof buf] + leaf(n);
}

__attribute__((noinline)) int huge_frame(int n) {
    volatile char buf[100000];
    for (int i = 0; i < n && i < (int)sizeof buf; i++) buf[i] = (char)i;
    return buf[n % sizeof buf];
}

__attribute__((noinline)) size_t through_plt(const char *s) { return strlen(s) + (size_t)atoi(s); }

int main(int argc, char **argv) {
    int r = big_frame(argc * 100) + huge_frame(argc * 1000) + (int)through_plt(argv[0]);
    printf("%d\n", r);
    return 0;
}
