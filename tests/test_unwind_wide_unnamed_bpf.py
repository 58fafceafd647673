"""Stacks through functions no symbol names, sampled with `podflame record --pid`: each function is one frame
named by its start (its FDE's, symbolizer/fdespans.py), not one frame per sampled instruction.

- tests/workloads/unnamed_funcs.c built -O2 and stripped bare: `_start -> libc -> main -> hot_mid -> hot_leaf`, all
  four of its own functions unnamed. The oracle: `nm -S` of the same build before `strip` (each function's start,
  turned into the file offset the frame's name carries). Before, 0% had that chain (each pc its own name).
- `openssl speed -bytes 16384 sha256`: Debian's libcrypto has .dynsym only, its SHA-256 assembly (and openssl's
  own code) unnamed; perf says `[unknown]` for them. Before, the leaf read as ~38 names in 3 s.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from symbolizer.elf import ElfSymbols
from tests.realsys import WORKLOADS
from tests.test_symbolizer_build import nm_functions
from tests.test_unwind_bpf import commonest, record, running, share

pytestmark = pytest.mark.bpf


def file_offset_name(exe: Path, vaddr: int) -> str:
    """`exe+0x<file offset>` of an ELF address, as podflame names an unnamed function by its start."""
    seg = next(s for s in ElfSymbols(str(exe)).segments if s.vaddr <= vaddr < s.vaddr + s.memsz)
    return f"{exe.name}+{vaddr - seg.vaddr + seg.offset:#x}"


def test_a_stripped_programs_functions_are_one_frame_each(tmp_path: Path) -> None:
    full, bare = tmp_path / "unnamed_full", tmp_path / "unnamed_funcs"
    subprocess.run(["gcc", "-O2", "-o", str(full), str(WORKLOADS / "unnamed_funcs.c")], check=True)
    shutil.copy(full, bare)
    subprocess.run(["strip", "--strip-all", str(bare)], check=True)
    funcs = nm_functions(full)
    name = {f: file_offset_name(bare, funcs[f][0]) for f in ("_start", "main", "hot_mid", "hot_leaf")}
    chain = (name["main"], name["hot_mid"], name["hot_leaf"])
    with running([str(bare), "spin"]) as pid:
        stacks = record(pid)
    exact = share(stacks, lambda s: len(s) >= 4 and s[0] == name["_start"] and s[-3:] == chain)
    leaves = Counter(s[-1] for s, n in stacks.items() for _ in range(n))
    print(f"\nstripped -O2: {exact:.1%} of {sum(stacks.values())} samples exactly {name['_start']};...;"
          f"{';'.join(chain)}; {len(leaves)} leaf names")
    assert exact >= 0.9, f"{exact:.1%}; commonest: {commonest(stacks)}"


def test_openssls_sha256_assembly_is_one_leaf() -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is installed on these machines"
    with running([openssl, "speed", "-seconds", "600", "-bytes", "16384", "sha256"]) as pid:
        stacks = record(pid)
    hashing = Counter({s: n for s, n in stacks.items() if "SHA256_Update" in s})
    assert sum(hashing.values()) / sum(stacks.values()) >= 0.8  # where openssl speed spends its time
    leaves = Counter(s[-1] for s, n in hashing.items() for _ in range(n))
    top, count = leaves.most_common(1)[0]
    print(f"\nopenssl sha256: {count / sum(hashing.values()):.1%} of the samples under SHA256_Update end in "
          f"{top}; {len(leaves)} leaf names")
    assert top.startswith("libcrypto.so.3+0x")  # the unnamed block function, by its start
    assert count / sum(hashing.values()) >= 0.9
