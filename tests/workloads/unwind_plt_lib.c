/* The shared library of tests/workloads/unwind_plt.c: a function so small that the PLT stub that
 * reaches it takes a good share of the caller's samples. */
unsigned long lib_tiny(unsigned long x) { return x + 1; }
