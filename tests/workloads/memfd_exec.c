/* Copies PROGRAM into a memfd and execs it from there, as runc runs its cloned binary: the process's code is
 * mapped from `/memfd:podflame_memfd (deleted)` (bench/unwind.py --wide, docs/benchmarks.md "Stop 23 fid23").
 * Usage: memfd_exec PROGRAM ARGS... */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int src = open(argv[1], O_RDONLY);
    struct stat st;
    if (src < 0 || fstat(src, &st) != 0) return 2;
    int fd = memfd_create("podflame_memfd", MFD_CLOEXEC);
    off_t off = 0;
    while (off < st.st_size)
        if (sendfile(fd, src, &off, (size_t)(st.st_size - off)) <= 0) return 3;
    char *env[] = {NULL};
    fexecve(fd, argv + 1, env);
    perror("fexecve");
    return 2;
}
