"""The first samples of short-lived processes are walked with unwind tables: a `-O2` program without frame
pointers (tests/workloads/exe_chain.c), run once so the agent's loader loads its table, then started again
several times for 0.1 s of CPU each in a pod-shaped cgroup. Before a process's mapping array is written (its
first sample is what announces it; after `sh -c 'exec ...'` the array still holds the shell's mappings)
the kernel finds the executable's table from task->mm->exe_file. Every sample whose leaf is in the chain
must show the whole chain up to main, each process's first ones included; `nm` places the frames (the
program prints main's runtime address, so its samples are placed after it exited)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.realsys import build_c, kubelet_cgroup

pytestmark = pytest.mark.bpf

FREQUENCY = 49
RUNS = 6
LIFE_S = 0.1  # of the process's own CPU: ~5 samples each, however loaded the machine
CHAIN = ("exe_leaf", "exe_level2", "exe_level1", "exe_run", "main")  # leaf first


def symbols(exe: Path) -> list[tuple[int, int, str]]:
    """(start, end, name) of the program's functions, from nm (the oracle)."""
    out = subprocess.run(["nm", "-S", "--defined-only", str(exe)], capture_output=True, text=True, check=True)
    found = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            start, size = int(parts[0], 16), int(parts[1], 16)
            found.append((start, start + size, parts[3]))
    return found


def name_at(table: list[tuple[int, int, str]], address: int) -> str | None:
    return next((name for start, end, name in table if start <= address < end), None)


def run_once(cgroup: Path, exe: Path) -> tuple[int, int]:
    """(pid, main's runtime address) of one run, started inside the cgroup through a shell that execs it."""
    proc = subprocess.Popen(["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", str(exe),
                             str(LIFE_S)], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return proc.pid, int(out.split()[0], 16)


@pytest.mark.parametrize("pie", [True, False], ids=["pie", "non-pie"])
def test_first_samples_of_short_processes_have_the_chain(tmp_path: Path, pie: bool) -> None:
    from profiler.sampler import Sampler

    os.environ.pop("PODFLAME_UNWIND_EXE", None)  # the fallback on, as the agent runs
    exe = build_c("exe_chain.c", tmp_path, "-O2", "-fomit-frame-pointer", *([] if pie else ["-no-pie"]))
    table = symbols(exe)
    main_at = next(start for start, _, name in table if name == "main")
    with kubelet_cgroup() as cg, Sampler(FREQUENCY, cgroup_ids=[cg.inode], unwind="auto") as sampler:
        # the node has seen the binary: its table is built and loaded (waited for: a loaded machine's loader may
        # take longer than the 0.5 s this slept, or miss a 0.1 s process, which is then run again)
        assert sampler.unwinder is not None and sampler.unwinder.maps.exe_fallback
        st = exe.stat()
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # the loader's key for the file
        deadline = time.monotonic() + 60
        while identity not in sampler.unwinder.maps.binaries:
            assert time.monotonic() < deadline, "the loader never loaded the program's table"
            run_once(cg.path, exe)
            for _ in range(40):
                if identity in sampler.unwinder.maps.binaries:
                    break
                time.sleep(0.05)
        warm = sampler.drain().unwind
        bias = dict(run_once(cg.path, exe) for _ in range(RUNS))
        time.sleep(0.3)
        drain = sampler.drain()
    good: dict[int, int] = {}
    bad: list[tuple[int, tuple[str | None, ...]]] = []
    for s in drain.samples:
        if s.tgid not in bias or not s.user_stack:
            continue
        names = tuple(name_at(table, a - (bias[s.tgid] - main_at)) for a in s.user_stack)
        if names[0] not in CHAIN[:-1]:
            continue  # main's clock_gettime, the shell before exec, start-up
        want = CHAIN[CHAIN.index(names[0]):]
        if names[:len(want)] == want:
            good[s.tgid] = good.get(s.tgid, 0) + s.count
        else:
            bad.append((s.count, names[:6]))
    exe_walks = drain.unwind.get("walk_exe", 0) - warm.get("walk_exe", 0)
    sampled = len(good) + len({n for n, _ in bad})
    assert sum(good.values()) >= RUNS, f"too few samples to judge: {good}"
    # first samples came before the mapping arrays (a process the loader read before its first sample in
    # the chain needs none: on a loaded machine, some): the executable's table walked them
    assert exe_walks >= 1, (exe_walks, good)
    assert sum(n for n, _ in bad) <= 1, f"samples without the chain from main: {bad} (good: {good}, {sampled})"
