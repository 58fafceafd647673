/* Stacks that end (or are cut and resumed) somewhere else than main's _start, each under a known chain
 * (tests/test_unwind_stack_ends_bpf.py). Built with gcc -O2 (no frame pointers). Modes:
 *   ucontext  a coroutine from makecontext/swapcontext (uc_link set, as coroutine libraries do):
 *             co_entry -> co_mid -> co_leaf, entered from glibc's __start_context, whose address
 *             makecontext pushes as co_entry's return address; the main side is main -> drive -> main_side
 *   altstack  SIGALRM handled on a sigaltstack (SA_ONSTACK): on_alt -> alt_mid -> alt_leaf, under the
 *             signal frame, under main -> wait_alt
 *   longjmp   a SIGALRM handler siglongjmp()s out of main -> jumped -> jumped_mid -> jumped_leaf; the
 *             jumped-to main starts the chain again (the abandoned frames and signal frame stay below sp)
 *   fiber     a fiber switched by assembly without CFI laid out as boost.context's make_fcontext/jump_fcontext
 *             (PHP fibers, folly, brpc): its first switch returns into a trampoline that pushes rbp, holding
 *             the address of a `finish` label inside that assembly, as the entry's return address:
 *             fib_entry -> fib_mid -> fib_leaf, under main -> fib_drive -> fib_main_side on the main stack
 *   nocfi     main -> nocfi_drive -> nocfi_spin, a leaf in assembly without CFI that spins with a data
 *             pointer at [rsp] and in rbp: a walker that guesses its caller from [rsp] or rbp lands in data
 *             (perf ends the stack at the leaf)
 * Usage: stack_ends MODE SECONDS [FILE]: ucontext writes to FILE where in libc the coroutine's pushed return
 * address points ("libc.so.6+0x..."), read off its new stack: the test's oracle for the root frame. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <ucontext.h>

#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory") /* keeps each caller's frame on the stack */

volatile unsigned long sink;
static double deadline;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned long spin(unsigned long x, int n) {
    for (int i = 0; i < n; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

/* ucontext */
static ucontext_t main_ctx, co_ctx;

KEEP void co_leaf(void) { sink += spin(sink, 400000); }
KEEP void co_mid(void) { co_leaf(); NO_SIBLING_CALL; }

KEEP void co_entry(void) {
    for (;;) {
        co_mid();
        if (swapcontext(&co_ctx, &main_ctx) != 0)
            abort();
    }
}

KEEP void main_side(void) { sink += spin(sink, 2000); }

KEEP void drive(const char *where) {
    static char stack[256 * 1024];
    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = stack;
    co_ctx.uc_stack.ss_size = sizeof stack;
    co_ctx.uc_link = &main_ctx;
    makecontext(&co_ctx, co_entry, 0);
    uintptr_t pushed = *(uintptr_t *)co_ctx.uc_mcontext.gregs[REG_RSP];  /* co_entry's return address */
    Dl_info info;
    FILE *f = where ? fopen(where, "w") : NULL;
    if (f && dladdr((void *)pushed, &info) && info.dli_fname) {
        const char *base = strrchr(info.dli_fname, '/');
        fprintf(f, "%s+%#lx\n", base ? base + 1 : info.dli_fname, (unsigned long)(pushed - (uintptr_t)info.dli_fbase));
    }
    if (f)
        fclose(f);
    while (now() < deadline) {
        if (swapcontext(&main_ctx, &co_ctx) != 0)
            abort();
        main_side();
    }
}

/* altstack */
KEEP void alt_leaf(void) { sink += spin(sink, 3000000); }
KEEP void alt_mid(void) { alt_leaf(); NO_SIBLING_CALL; }
KEEP void on_alt(int sig) { (void)sig; alt_mid(); NO_SIBLING_CALL; }

KEEP void wait_alt(void) {
    while (now() < deadline) sink += spin(sink, 1000);
}

/* longjmp */
static sigjmp_buf back;

KEEP void on_jump(int sig) { (void)sig; siglongjmp(back, 1); }
KEEP void jumped_leaf(void) { for (;;) sink += spin(sink, 1000); }
KEEP void jumped_mid(void) { jumped_leaf(); NO_SIBLING_CALL; }
KEEP void jumped(void) { jumped_mid(); NO_SIBLING_CALL; }

/* fiber: fib_make(top, fn) lays out a context whose first fib_jump returns into fib_trampoline with rbx = fn
 * and rbp = fib_finish; fib_jump(&save, to) saves the callee-saved registers on this stack and switches. */
__asm__(".text\n"
        ".globl fib_jump\n.type fib_jump,@function\nfib_jump:\n"
        "  push %rbp\n  push %rbx\n  push %r12\n  push %r13\n  push %r14\n  push %r15\n"
        "  mov %rsp, (%rdi)\n  mov %rsi, %rsp\n"
        "  pop %r15\n  pop %r14\n  pop %r13\n  pop %r12\n  pop %rbx\n  pop %rbp\n  ret\n"
        ".size fib_jump, .-fib_jump\n"
        ".globl fib_make\n.type fib_make,@function\nfib_make:\n"
        "  mov %rdi, %rax\n  and $-16, %rax\n  lea -0x48(%rax), %rax\n"
        "  movq $0, (%rax)\n  movq $0, 0x8(%rax)\n  movq $0, 0x10(%rax)\n  movq $0, 0x18(%rax)\n"
        "  mov %rsi, 0x20(%rax)\n"
        "  lea fib_finish(%rip), %rcx\n  mov %rcx, 0x28(%rax)\n"
        "  lea fib_trampoline(%rip), %rcx\n  mov %rcx, 0x30(%rax)\n  ret\n"
        "fib_trampoline:\n  push %rbp\n  jmp *%rbx\n"
        "fib_finish:\n  xor %edi, %edi\n  call _exit@PLT\n  hlt\n"
        ".size fib_make, .-fib_make\n");
void *fib_make(void *top, void (*fn)(void));
void fib_jump(void **save, void *to);

/* nocfi: no .cfi_ directives, so the leaf is in a gap between the FDEs of gcc's code */
__asm__(".text\n"
        ".globl nocfi_spin\n.type nocfi_spin,@function\nnocfi_spin:\n"
        "  push %rbp\n  lea sink(%rip), %rbp\n  push %rbp\n  mov %rdi, %rcx\n  mov %rdi, %rax\n"
        "1:\n  imul %rax, %rax\n  dec %rcx\n  jnz 1b\n"
        "  pop %rbp\n  pop %rbp\n  ret\n"
        ".size nocfi_spin, .-nocfi_spin\n");
unsigned long nocfi_spin(unsigned long n);

KEEP void nocfi_drive(void) {
    while (now() < deadline) {
        sink += nocfi_spin(4000000);
        NO_SIBLING_CALL;
    }
}

static void *fib_sp, *main_sp;

KEEP void fib_leaf(void) { sink += spin(sink, 400000); }
KEEP void fib_mid(void) { fib_leaf(); NO_SIBLING_CALL; }

KEEP void fib_entry(void) {
    for (;;) {
        fib_mid();
        fib_jump(&fib_sp, main_sp);
    }
}

KEEP void fib_main_side(void) { sink += spin(sink, 2000); }

KEEP void fib_drive(void) {
    static char stack[256 * 1024] __attribute__((aligned(16)));
    fib_sp = fib_make(stack + sizeof stack, fib_entry);
    while (now() < deadline) {
        fib_jump(&main_sp, fib_sp);
        fib_main_side();
    }
}

static void every(void (*handler)(int), int flags, long usec) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, usec}, {0, usec}};
    setitimer(ITIMER_REAL, &it, NULL);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "ucontext";
    deadline = now() + (argc > 2 ? atof(argv[2]) : 5.0);
    if (strcmp(mode, "ucontext") == 0) {
        drive(argc > 3 ? argv[3] : NULL);
    } else if (strcmp(mode, "altstack") == 0) {
        static char alt[64 * 1024];
        stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt, .ss_flags = 0};
        sigaltstack(&ss, NULL);
        every(on_alt, SA_ONSTACK | SA_RESTART, 20000);
        wait_alt();
    } else if (strcmp(mode, "longjmp") == 0) {
        every(on_jump, 0, 5000);
        sigsetjmp(back, 1);  /* every SIGALRM comes back here, its mask restored */
        if (now() < deadline)
            jumped();
    } else if (strcmp(mode, "fiber") == 0) {
        fib_drive();
    } else if (strcmp(mode, "nocfi") == 0) {
        nocfi_drive();
    } else {
        return 2;
    }
    return 0;
}
