"""Native stacks through code that moved under a running process, sampled with `podflame record --pid`
(docs/benchmarks.md "Stop 24 fid24"; bench/unwind.py --wide has them beside perf --call-graph dwarf).

- Text copied into anonymous memory mapped over it (tests/workloads/moved_text.c `remap`), as node
  --use-largepages=on and iodlr's liblppreload move the middle of a text segment to huge pages: /proc/PID/maps
  shows an anonymous r-xp mapping between two mappings of the file. Before procmaps gave it back to its file,
  no table and no name covered it: 0% of the samples reached _start, every stack was
  `msort_with_tmp;[anon]+0x41;[anon]+0x24` (node --use-largepages=on: 11.7% reached _start, 0% had its chain;
  perf --call-graph dwarf 0% on both).
- A page of the text made writable and patched (`mprotect`: the file's text in three mappings) and the program's
  library loaded twice, the second copy with its own libc in a dlmopen namespace (`dlmopen`): both measured
  exact before the change too (perf: 100% and 0%); kept as guards.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import commonest, exact_chain, reaches_entry, record, running, share

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("moved")
    exe, lib = tmp / "moved_text", tmp / "libmoved_text.so"
    subprocess.run(["gcc", "-O2", "-fno-toplevel-reorder", "-pthread", "-o", str(exe),
                    str(WORKLOADS / "moved_text.c"), "-ldl"], check=True)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(WORKLOADS / "moved_text_lib.c")],
                   check=True)
    return exe, lib


def chain_from_start(s: tuple[str, ...]) -> bool:
    return reaches_entry(s) and exact_chain(s)


@pytest.mark.parametrize("mode", ["remap", "mprotect"])
def test_text_moved_or_patched_keeps_its_chain(moved: tuple[Path, Path], mode: str) -> None:
    exe, _ = moved
    with running([str(exe), mode, "600"]) as pid:
        if mode == "remap":  # the workload's first act; the anonymous mapping is what this test is about
            assert any(line.split()[1:] == ["r-xp", "00000000", "00:00", "0"]
                       for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
        stacks = record(pid)
    got = share(stacks, chain_from_start)
    print(f"\n{mode}: {got:.1%} of {sum(stacks.values())} samples exact from _start")
    assert got >= 0.85, f"{got:.1%}; commonest: {commonest(stacks)}"


def test_a_library_loaded_again_in_a_dlmopen_namespace(moved: tuple[Path, Path]) -> None:
    exe, lib = moved
    with running([str(exe), "dlmopen", "600", str(lib)]) as pid:
        stacks = record(pid)

    def chain(s: tuple[str, ...]) -> bool:
        return reaches_entry(s) and s[-2:] == ("lib_compare", "lib_leaf") and "main" in s and \
            s[s.index("main"):s.index("main") + 3] == ("main", "lib_run", "lib_level")
    got = share(stacks, chain)
    print(f"\ndlmopen: {got:.1%} of {sum(stacks.values())} samples exact from _start")
    assert got >= 0.85, f"{got:.1%}; commonest: {commonest(stacks)}"
