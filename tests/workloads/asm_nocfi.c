/* A hot leaf in hand-written assembly with no CFI (no .cfi_ directives: as NASM/YASM code in ffmpeg, x264,
 * libjpeg-turbo or ISA-L, and .S files written without them), under a known C chain:
 *   main -> caller1 -> caller2 -> asm_spin (plain: pushes nothing) or asm_spin_framed (push rbp; mov rsp, rbp)
 * The binary's .eh_frame covers the C functions and not the assembly: the unwinder finds a gap there.
 * Usage: asm_nocfi plain|framed SECONDS */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")

__asm__(".text\n"
        ".globl asm_spin\n.type asm_spin,@function\nasm_spin:\n"
        "  mov %rdi, %rax\n"
        "1: imul $0x5851f42d, %rax, %rax\n  dec %rdi\n  jnz 1b\n  ret\n"
        ".size asm_spin, .-asm_spin\n"
        ".globl asm_spin_framed\n.type asm_spin_framed,@function\nasm_spin_framed:\n"
        "  push %rbp\n  mov %rsp, %rbp\n  mov %rdi, %rax\n"
        "1: imul $0x5851f42d, %rax, %rax\n  dec %rdi\n  jnz 1b\n  pop %rbp\n  ret\n"
        ".size asm_spin_framed, .-asm_spin_framed\n");
unsigned long asm_spin(unsigned long n);
unsigned long asm_spin_framed(unsigned long n);

volatile unsigned long sink;
static int framed;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

KEEP void caller2(void) {
    sink += framed ? asm_spin_framed(200000) : asm_spin(200000);
    NO_SIBLING_CALL;
}

KEEP void caller1(void) {
    caller2();
    NO_SIBLING_CALL;
}

int main(int argc, char **argv) {
    framed = argc > 1 && strcmp(argv[1], "framed") == 0;
    double deadline = now() + (argc > 2 ? atof(argv[2]) : 5.0);
    while (now() < deadline) caller1();
    return 0;
}
