/* Static functions a stripped build leaves without any symbol, and one assembly function without CFI.

   `unnamed_funcs addresses`: prints each function's run-time address, then "ready", and waits for stdin to close
   (tests/test_symbolizer_build.running). `unnamed_funcs spin`: main -> hot_mid -> hot_leaf forever. */
#include <stdio.h>
#include <string.h>

static volatile unsigned long sink;

__attribute__((noinline)) static unsigned long hot_leaf(unsigned long n) {
    unsigned long x = n;
    for (int i = 0; i < 4000; i++)
        x = x * 6364136223846793005UL + (unsigned long)i;
    return x;
}

__attribute__((noinline)) static void hot_mid(unsigned long n) {
    sink += hot_leaf(n);
    sink ^= n;
}

/* no .cfi_ directives: no FDE covers it */
__asm__(".text\n.globl nocfi_spin\n.type nocfi_spin, @function\nnocfi_spin:\n"
        "  nop\n  nop\n  nop\n  nop\n  ret\n.size nocfi_spin, .-nocfi_spin\n");
void nocfi_spin(void);

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "spin")) {
        for (unsigned long n = 0;; n++)
            hot_mid(n);
    }
    printf("hot_leaf %p\nhot_mid %p\nnocfi_spin %p\nmain %p\nready\n", (void *)hot_leaf, (void *)hot_mid,
           (void *)nocfi_spin, (void *)main);
    fflush(stdout);
    nocfi_spin();
    while (getchar() != EOF)
        ;
    return 0;
}
