/* Code moved or doubled under a running process (docs/benchmarks.md "Stop 24 fid24"; build with -O2
 * -fno-toplevel-reorder, which keeps hot_text's functions in this order, hot_end last on a page of its own):
 *   remap: the hot chain's pages of the executable's text (the middle of it) copied into anonymous memory
 *          mapped over them, as node --use-largepages and iodlr's liblppreload move text to huge pages:
 *          /proc/PID/maps shows an anonymous r-xp mapping between two of the file's;
 *   mprotect: a page of the chain's text made writable, patched with its own bytes, made executable again
 *          (hot patching): the file's text split in three mappings, the middle one partly anonymous pages;
 *   dlmopen: the chain's library loaded a second time in a new link-map namespace (two copies of one file,
 *          and a second libc, at other addresses), the hot loop in the second copy;
 *   vdso:   main -> spin_clock -> clock_gettime in a loop (most samples in the vDSO);
 *   smallstack: 3 threads on 16 KiB stacks running main's chain.
 * Usage: moved_text MODE SECONDS [LIB] */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;
#define KEEP __attribute__((noinline, noclone))
#define NO_SIBLING_CALL __asm__ volatile("" ::: "memory")
#define HOT __attribute__((section("hot_text")))

extern char __start_hot_text[];
void hot_end(void);

HOT KEEP __attribute__((aligned(4096))) unsigned long leaf_work(unsigned long x) {
    for (int i = 0; i < 4000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

HOT KEEP int compare(const void *a, const void *b) {
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    sink += leaf_work(x ^ y);
    NO_SIBLING_CALL;
    return (x > y) - (x < y);
}

HOT KEEP void level3(unsigned long *v, int n) { qsort(v, n, sizeof *v, compare); NO_SIBLING_CALL; }
HOT KEEP void level2(unsigned long *v, int n) { level3(v, n); NO_SIBLING_CALL; }
HOT KEEP void level1(unsigned long *v, int n) { level2(v, n); NO_SIBLING_CALL; }

HOT KEEP void run_chain(void) {
    unsigned long v[64];
    for (int i = 0; i < 64; i++) v[i] = (unsigned long)rand();
    level1(v, 64);
    NO_SIBLING_CALL;
}

/* hot_text's last page (with what the linker puts after it) is not remapped: the file's text stays mapped
 * on both sides of the anonymous copy, as node's and iodlr's 2 MiB-aligned middle of a text segment is */
HOT KEEP __attribute__((aligned(4096))) void hot_end(void) { NO_SIBLING_CALL; }


static double deadline;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

KEEP void remap_text(void) { /* not in hot_text: it runs while those pages are replaced */
    char *start = __start_hot_text, *end = (char *)hot_end;
    size_t size = end - start;
    char *copy = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(copy, start, size);
    if (mmap(start, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != start)
        abort();
    memcpy(start, copy, size);
    mprotect(start, size, PROT_READ | PROT_EXEC);
    munmap(copy, size);
}

KEEP void patch_text(void) {
    char *page = (char *)((uintptr_t)(void *)level2 & ~(uintptr_t)4095);
    mprotect(page, 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
    page[0] = page[0]; /* a private copy of the page: its mapping now holds an anonymous page */
    __asm__ volatile("" ::: "memory");
    mprotect(page, 4096, PROT_READ | PROT_EXEC);
}

KEEP void spin_clock(void) {
    while (now() < deadline)
        for (int i = 0; i < 1000; i++) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            sink += ts.tv_nsec;
        }
    NO_SIBLING_CALL;
}

KEEP void *worker(void *arg) {
    (void)arg;
    while (now() < deadline) run_chain();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    deadline = now() + atof(argv[2]);
    if (!strcmp(argv[1], "remap")) remap_text();
    else if (!strcmp(argv[1], "mprotect")) patch_text();
    else if (!strcmp(argv[1], "vdso")) { spin_clock(); return 0; }
    else if (!strcmp(argv[1], "smallstack")) {
        pthread_t t[3];
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 16384);
        for (int i = 0; i < 3; i++) pthread_create(&t[i], &attr, worker, NULL);
        for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
        return 0;
    } else if (!strcmp(argv[1], "dlmopen")) {
        void *first = dlopen(argv[3], RTLD_NOW);
        void *second = dlmopen(LM_ID_NEWLM, argv[3], RTLD_NOW);
        if (!first || !second) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        void (*run)(double) = (void (*)(double))dlsym(second, "lib_run");
        void (*touch)(double) = (void (*)(double))dlsym(first, "lib_run");
        touch(0); /* the first copy runs once: both are mapped and used */
        run(deadline);
        return 0;
    }
    while (now() < deadline) run_chain();
    return 0;
}
