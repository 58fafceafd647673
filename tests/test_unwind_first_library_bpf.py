"""The first samples of short-lived processes are walked through their first library with its unwind table: a
`-O2` program without frame pointers whose hot chain crosses libc (tests/workloads/spawn_qsort.c: qsort calls
back into the program), run once so the agent's loader has its table and libc's, then started many times for
50 ms of CPU each, four at a time, in a pod-shaped cgroup, sampled at 99 Hz. Before a process's mapping array is
written (its first sample announces it) the kernel walks it with its executable's table (found from
task->mm->exe_file) and, at the first address outside the executable, with the table of the library there (one
bpf_find_vma a sample).
Without that, libc's frames were stepped with frame pointers libc does not keep, and those samples lost
level3..main. Every sample whose leaf is in the program's chain must show the exact chain up to main, with
libc's frames between compare and level3; `nm` places the program's frames (it prints main's runtime address)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.realsys import build_c, kubelet_cgroup
from tests.test_unwind_first_samples_bpf import name_at, symbols

pytestmark = pytest.mark.bpf

FREQUENCY = 99
RUNS = 12  # rounds of BATCH processes started together (a busy node's churn: the loader has several at once)
BATCH = 4
LIFE_S = 0.05  # of the process's own CPU: ~5 samples each
CHAIN = ("leaf_work", "compare", "level3", "level2", "level1", "run_chain", "main")  # leaf first
LIBC_BETWEEN = ("compare", "level3")  # qsort's frames (in libc) lie between these two


def start(cgroup: Path, exe: Path, life: float, n: int = 1) -> dict[int, list[int]]:
    """pid -> the runtime addresses it printed (main's first) of `n` runs started together, each inside the cgroup
    through a shell that execs it."""
    procs = [subprocess.Popen(["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", str(exe),
                               str(life)], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    found = {}
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        found[proc.pid] = [int(word, 16) for word in out.split()]
    return found


def exact_chain(names: tuple[str | None, ...], chain: tuple[str, ...] = CHAIN,
                between: tuple[str, str] = LIBC_BETWEEN) -> bool:
    """Whether a stack (leaf first; None: outside the named files) is `chain` from its leaf down to main, with at
    least one unnamed frame (libc's qsort) between `between`'s two and none anywhere else."""
    at = 0
    want = chain[chain.index(names[0]):] if names[0] in chain else ()
    for i, name in enumerate(want):
        if i and (want[i - 1], name) == between:
            if at >= len(names) or names[at] is not None:
                return False
            while at < len(names) and names[at] is None:
                at += 1
        if at >= len(names) or names[at] != name:
            return False
        at += 1
    return bool(want)


def short_processes(tmp_path: Path, lib: Path | None = None, chain: tuple[str, ...] = CHAIN,
                    between: tuple[str, str] = LIBC_BETWEEN) -> tuple[int, int, dict[str, int], list]:
    """Exact and judged samples of RUNS x BATCH short processes started once the node has seen the program, the
    walk counters over them, and the broken stacks. With `lib` (spawn_qsort_lib.c built as a shared library), the
    program is built -DVIA_LIB against it and that library's frames are named from its own nm."""
    from profiler.sampler import Sampler

    os.environ.pop("PODFLAME_UNWIND_EXE", None)  # the fallback on, as the agent runs
    link = [] if lib is None else ["-DVIA_LIB", "-Wl,--no-as-needed", str(lib), f"-Wl,-rpath,{lib.parent}"]
    exe = build_c("spawn_qsort.c", tmp_path, "-O2", "-fomit-frame-pointer", *link)
    tables = [symbols(exe)] + ([] if lib is None else [symbols(lib)])
    starts = [next(begin for begin, _, name in table if name == name_of)
              for table, name_of in zip(tables, ("main", "lib_sort"), strict=False)]
    libc = subprocess.run(["gcc", "-print-file-name=libc.so.6"], capture_output=True, text=True,
                          check=True).stdout.strip()
    files = [exe, Path(libc)] + ([] if lib is None else [lib])
    identities = [(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) for st in (os.stat(f) for f in files)]
    with kubelet_cgroup() as cg, Sampler(FREQUENCY, cgroup_ids=[cg.inode], unwind="auto") as sampler:
        # the node has seen the program: its tables (and libc's, asked for by walks through qsort) are loaded
        assert sampler.unwinder is not None and sampler.unwinder.maps.exe_fallback
        deadline = time.monotonic() + 60
        while not all(i in sampler.unwinder.maps.binaries for i in identities):
            assert time.monotonic() < deadline, "the loader never loaded the program's and libraries' tables"
            start(cg.path, exe, 0.3)
            time.sleep(0.2)
        warm = sampler.drain().unwind
        placed = {pid: at for _ in range(RUNS) for pid, at in start(cg.path, exe, LIFE_S, BATCH).items()}
        time.sleep(0.3)
        drain = sampler.drain()

    def name(pid: int, address: int) -> str | None:
        for table, begin, at in zip(tables, starts, placed[pid], strict=True):
            found = name_at(table, address - (at - begin))
            if found is not None:
                return found
        return None

    exact = judged = 0
    bad: list[tuple[int, tuple[str | None, ...]]] = []
    for s in drain.samples:
        if s.tgid not in placed or not s.user_stack:
            continue
        names = tuple(name(s.tgid, a) for a in s.user_stack)
        if names[0] not in chain[:-1]:
            continue  # a leaf in libc (qsort, clock_gettime) or main: not judged
        judged += s.count
        if exact_chain(names, chain, between):
            exact += s.count
        else:
            bad.append((s.count, names[:12]))
    delta = {k: drain.unwind.get(k, 0) - warm.get(k, 0) for k in (
        "walk_exe", "walk_vma", "walk_vma_fail", "walk_vma_no_table", "walk_tables", "walk_lib_known")}
    print(f"exact chains {exact}/{judged} = {exact / max(judged, 1):.3f}; walks {delta}")
    assert judged >= RUNS, f"too few samples to judge: {judged}"
    return exact, judged, delta, bad


def test_first_samples_cross_their_first_library_with_its_table(tmp_path: Path) -> None:
    exact, judged, delta, bad = short_processes(tmp_path)
    # first samples came before the mapping arrays, and their first library (libc) was walked with its table: found
    # by the sample's bpf_find_vma, or remembered from the process's mmap of it (on_mmap_unlock)
    assert delta["walk_vma"] + delta["walk_lib_known"] >= 1, delta
    # main (libc stepped with frame pointers in those walks): 81-82% exact (docs/benchmarks.md, stop 25 vma25)
    assert exact >= 0.95 * judged, f"exact {exact}/{judged}; broken: {bad[:8]} {delta}"


def test_a_kernel_without_find_vma_loads_the_walker_without_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 5.17 a program calling bpf_find_vma would not load at all: the sampler leaves the lookup out
    (profiler.btf.kernel_has_find_vma); it loads, and the first samples' libraries are the ones remembered from
    the process's own mmaps (on_mmap_unlock needs no bpf_find_vma): without them 80.3% exact (stop 26 fid26)."""
    import profiler.sampler

    monkeypatch.setattr(profiler.sampler, "kernel_has_find_vma", lambda: False)
    exact, judged, delta, bad = short_processes(tmp_path)
    assert delta["walk_exe"] >= 1 and delta["walk_vma"] == delta["walk_vma_fail"] == 0, delta
    assert delta["walk_vma_no_table"] == 0 and delta["walk_lib_known"] >= 1, delta
    assert exact >= 0.95 * judged, f"exact {exact}/{judged}; broken: {bad[:8]} {delta}"
