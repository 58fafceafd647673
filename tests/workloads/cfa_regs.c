/* Hot code whose call frame information needs a register other than rsp/rbp, as libgcc_s's context
 * install (CFA in rcx) and libc's longjmp (CFA in rdi, return address in rdx) do, for
 * tests/test_unwind_cfa_regs.py. Built -O2 without frame pointers:
 *   rcx: main -> outer_rcx -> spin_cfa_rcx, which spins with CFA = rcx + 8 (rsp moved 256 bytes away)
 *   rdx: main -> outer_rdx -> spin_ra_rdx, which spins with its return address popped into rdx
 * Usage: cfa_regs rcx|rdx */
#include <stdio.h>
#include <string.h>

void spin_cfa_rcx(unsigned long n);
void spin_ra_rdx(unsigned long n);

__asm__(
    "    .text\n"
    "    .globl spin_cfa_rcx\n"
    "    .type spin_cfa_rcx, @function\n"
    "spin_cfa_rcx:\n"
    "    .cfi_startproc\n"
    "    mov %rsp, %rcx\n"
    "    .cfi_def_cfa %rcx, 8\n"
    "    sub $256, %rsp\n"
    "1:  dec %rdi\n"
    "    jnz 1b\n"
    "    mov %rcx, %rsp\n"
    "    .cfi_def_cfa %rsp, 8\n"
    "    ret\n"
    "    .cfi_endproc\n"
    "    .size spin_cfa_rcx, .-spin_cfa_rcx\n"
    "    .globl spin_ra_rdx\n"
    "    .type spin_ra_rdx, @function\n"
    "spin_ra_rdx:\n"
    "    .cfi_startproc\n"
    "    pop %rdx\n"
    "    .cfi_adjust_cfa_offset -8\n"
    "    .cfi_register %rip, %rdx\n"
    "    sub $256, %rsp\n"
    "    .cfi_adjust_cfa_offset 256\n"
    "1:  dec %rdi\n"
    "    jnz 1b\n"
    "    add $256, %rsp\n"
    "    .cfi_adjust_cfa_offset -256\n"
    "    jmp *%rdx\n"
    "    .cfi_endproc\n"
    "    .size spin_ra_rdx, .-spin_ra_rdx\n");

static volatile unsigned long rounds;

__attribute__((noinline)) void outer_rcx(void) {
    for (;;) {
        spin_cfa_rcx(1000000);
        rounds++;
    }
}

__attribute__((noinline)) void outer_rdx(void) {
    for (;;) {
        spin_ra_rdx(1000000);
        rounds++;
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "rdx") == 0)
        outer_rdx();
    else
        outer_rcx();
    return 0;
}
