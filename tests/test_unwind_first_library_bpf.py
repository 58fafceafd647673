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


def start(cgroup: Path, exe: Path, life: float, n: int = 1) -> dict[int, int]:
    """pid -> main's runtime address of `n` runs started together, each inside the cgroup through a shell that
    execs it."""
    procs = [subprocess.Popen(["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", str(exe),
                               str(life)], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    found = {}
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        found[proc.pid] = int(out.split()[0], 16)
    return found


def exact_chain(names: tuple[str | None, ...]) -> bool:
    """Whether a stack (leaf first; None: outside the program) is the chain from its leaf down to main, with at
    least one library frame (qsort) between compare and level3 and none anywhere else."""
    at = 0
    want = CHAIN[CHAIN.index(names[0]):] if names[0] in CHAIN else ()
    for i, name in enumerate(want):
        if i and (want[i - 1], name) == LIBC_BETWEEN:
            if at >= len(names) or names[at] is not None:
                return False
            while at < len(names) and names[at] is None:
                at += 1
        if at >= len(names) or names[at] != name:
            return False
        at += 1
    return bool(want)


def short_processes(tmp_path: Path) -> tuple[int, int, dict[str, int], list]:
    """Exact and judged samples of RUNS x BATCH short processes started once the node has seen the program, the
    walk counters over them, and the broken stacks."""
    from profiler.sampler import Sampler

    os.environ.pop("PODFLAME_UNWIND_EXE", None)  # the fallback on, as the agent runs
    exe = build_c("spawn_qsort.c", tmp_path, "-O2", "-fomit-frame-pointer")
    table = symbols(exe)
    main_at = next(begin for begin, _, name in table if name == "main")
    libc = subprocess.run(["gcc", "-print-file-name=libc.so.6"], capture_output=True, text=True,
                          check=True).stdout.strip()
    identities = [(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) for st in (exe.stat(), os.stat(libc))]
    with kubelet_cgroup() as cg, Sampler(FREQUENCY, cgroup_ids=[cg.inode], unwind="auto") as sampler:
        # the node has seen the program: its table and libc's (asked for by walks through qsort) are loaded
        assert sampler.unwinder is not None and sampler.unwinder.maps.exe_fallback
        deadline = time.monotonic() + 60
        while not all(i in sampler.unwinder.maps.binaries for i in identities):
            assert time.monotonic() < deadline, "the loader never loaded the program's and libc's tables"
            start(cg.path, exe, 0.3)
            time.sleep(0.2)
        warm = sampler.drain().unwind
        bias = {pid: at for _ in range(RUNS) for pid, at in start(cg.path, exe, LIFE_S, BATCH).items()}
        time.sleep(0.3)
        drain = sampler.drain()
    exact = judged = 0
    bad: list[tuple[int, tuple[str | None, ...]]] = []
    for s in drain.samples:
        if s.tgid not in bias or not s.user_stack:
            continue
        names = tuple(name_at(table, a - (bias[s.tgid] - main_at)) for a in s.user_stack)
        if names[0] not in CHAIN[:-1]:
            continue  # a leaf in libc (qsort, clock_gettime) or main: not judged
        judged += s.count
        if exact_chain(names):
            exact += s.count
        else:
            bad.append((s.count, names[:10]))
    delta = {k: drain.unwind.get(k, 0) - warm.get(k, 0) for k in ("walk_exe", "walk_vma", "walk_vma_fail",
                                                                    "walk_vma_no_table", "walk_tables")}
    print(f"exact chains {exact}/{judged} = {exact / max(judged, 1):.3f}; walks {delta}")
    assert judged >= RUNS, f"too few samples to judge: {judged}"
    return exact, judged, delta, bad


def test_first_samples_cross_their_first_library_with_its_table(tmp_path: Path) -> None:
    exact, judged, delta, bad = short_processes(tmp_path)
    # first samples came before the mapping arrays, and their first library (libc) was walked with its table
    assert delta["walk_vma"] >= 1, delta
    # main (libc stepped with frame pointers in those walks): 81-82% exact (docs/benchmarks.md, stop 25 vma25)
    assert exact >= 0.95 * judged, f"exact {exact}/{judged}; broken: {bad[:8]} {delta}"


def test_a_kernel_without_find_vma_loads_the_walker_without_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 5.17 a program calling bpf_find_vma would not load at all: the sampler leaves the lookup out
    (profiler.btf.kernel_has_find_vma); it loads, and the first samples' libraries are stepped as before."""
    import profiler.sampler

    monkeypatch.setattr(profiler.sampler, "kernel_has_find_vma", lambda: False)
    delta = short_processes(tmp_path)[2]
    assert delta["walk_exe"] >= 1 and delta["walk_vma"] == delta["walk_vma_fail"] == 0, delta
    assert delta["walk_vma_no_table"] == 0, delta
