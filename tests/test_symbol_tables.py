"""ELF symbol tables read by the symbolizer against readelf (binutils) as the oracle.

The reader decodes the tables with `struct` and sorts packed ranks (symbolizer.elf: a new binary's table is
read while the agent samples); readelf lists the same tables independently. Each binary's table, as the
symbolizer keeps it (one name per address, the best alias, zero-size symbols reaching the next symbol or their
section's end), must equal what readelf's listing gives under those rules, range for range.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from symbolizer.elf import ElfSymbols
from tests.realsys import build_c

_SYMBOL = re.compile(r"^\s*\d+:\s+([0-9a-f]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s?(.*)$")
_TYPES = {"FUNC": 0, "IFUNC": 1, "NOTYPE": 2}
_BINDS = {"GLOBAL": 0, "WEAK": 0, "LOCAL": 1}

ALIASES_C = r"""
#include <stdio.h>
static int counter;
int work(int x) { counter += x; return counter * 3; }
int work_alias(int x) __attribute__((alias("work")));
int __internal_work(int x) __attribute__((alias("work")));
__attribute__((weak)) int weak_fn(int x) { return x + 1; }
static __attribute__((noinline)) int local_fn(int x) { return x * 7; }
__asm__(".text\n.globl asm_label\nasm_label:\n nop\n nop\n ret\n");
int main(int argc, char **argv) { printf("%d\n", work(argc) + weak_fn(argc) + local_fn(argc)); return 0; }
"""


def _sections(path: str) -> dict[int, tuple[int, bool]]:
    """Section index -> (end address, executable), from `readelf -SW`."""
    out: dict[int, tuple[int, bool]] = {}
    text = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        m = re.match(r"\s*\[\s*(\d+)\]\s+(.*)$", line)
        if m is None:
            continue
        index, tokens = int(m.group(1)), m.group(2).split()
        if index == 0:
            continue
        addr, size = int(tokens[2], 16), int(tokens[4], 16)
        flags = tokens[6] if len(tokens) == 10 else ""
        out[index] = (addr + size, "X" in flags)
    return out


def _oracle(path: str, table: str) -> list[tuple[int, int, str]]:
    """The symbolizer's ranges for `table` of `path`, derived from readelf's listing."""
    sections = _sections(path)
    text = subprocess.run(["readelf", "-sW", path], capture_output=True, text=True, check=True).stdout
    listing = text.split(f"Symbol table '{table}'", 1)[1].split("Symbol table '", 1)[0]
    by_start: dict[int, list[tuple[tuple, int, str]]] = {}
    for line in listing.splitlines():
        m = _SYMBOL.match(line)
        if m is None:
            continue
        value, size, typ, bind, _, ndx, name = m.groups()
        if typ not in _TYPES or not ndx.isdigit():
            continue  # data, sections, files; undefined, absolute and common symbols
        section = int(ndx)
        if typ == "NOTYPE" and not sections.get(section, (0, False))[1]:
            continue
        name = re.sub(r" \(\d+\)$", "", name)  # readelf's version index
        if not name or name.startswith("$"):
            continue
        if "@" in name[1:]:
            name = name.split("@", 1)[0]
        start, length = int(value, 16), int(size, 0)
        end = start + length if length else -sections.get(section, (0, False))[0]
        rank = (_TYPES[typ], _BINDS.get(bind, 3), not length, len(name) - len(name.lstrip("_")), len(name), name)
        by_start.setdefault(start, []).append((rank, end, name))
    chosen: list[tuple[int, int, str]] = []
    for start in sorted(by_start):
        group = sorted(by_start[start], key=lambda g: g[0])
        _, end, name = group[0]
        sized = [e for _, e, _ in group if e > 0]
        if sized:
            end = max([end, *sized]) if end > 0 else max(sized)
        chosen.append((start, end, name))
    out = []
    for i, (start, end, name) in enumerate(chosen):
        if end <= 0:
            bounds = [-end] if -end > start else []
            if i + 1 < len(chosen):
                bounds.append(chosen[i + 1][0])
            end = min(bounds) if bounds else start + 1
        if end > start:
            out.append((start, end, name))
    return out


def _check(elf: ElfSymbols, file: str, table: str) -> int:
    """The table's ranges, but for the synthetic `name@plt` ones (no symbol table holds them: objdump is their
    oracle, tests/test_symbol_plt.py), equal readelf's."""
    ranges = elf.ranges
    got = [r for r in zip(ranges.starts, ranges.ends, ranges.names, strict=True) if not r[2].endswith("@plt")]
    want = _oracle(file, table)
    assert len(got) == len(want), (file, table)
    assert got == want, next((g, w) for g, w in zip(got, want, strict=True) if g != w)
    return len(got)


def test_a_built_program_with_aliases_local_weak_and_asm_labels_matches_readelf(tmp_path: Path) -> None:
    src = tmp_path / "aliases.c"
    src.write_text(ALIASES_C)
    exe = tmp_path / "aliases"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    elf = ElfSymbols(str(exe))
    assert _check(elf, str(exe), ".symtab") > 5 and elf.symbol_source == "symtab"
    work = next(s for s, n in zip(elf.ranges.starts, elf.ranges.names, strict=True) if n == "work")
    assert elf.lookup(work) == "work"  # exported, shortest, no underscores: over work_alias and __internal_work
    assert elf.lookup_start(next(s for s, n in zip(elf.ranges.starts, elf.ranges.names, strict=True)
                                 if n == "asm_label") + 1) is not None  # a zero-size label reaches the next symbol


@pytest.mark.parametrize("path", ["/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                                  "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/bin/bash"])
def test_system_binaries_and_their_debug_files_match_readelf(path: str) -> None:
    """Debian's binaries: .dynsym alone (python3, bash), or libc's .symtab from its build-id debug file
    (libc6-dbg), C++ names (libstdc++)."""
    elf = ElfSymbols(path, debug_dirs=["/usr/lib/debug"])
    elf.ranges  # noqa: B018 -- read, which sets symbol_source
    source = elf.symbol_source
    assert source is not None and source != "minidebuginfo"
    file, table = (path, f".{source}") if source in ("symtab", "dynsym") else (source, ".symtab")
    assert _check(elf, file, table) > 100


def test_a_test_workload_built_as_the_tests_build_them_matches_readelf(tmp_path: Path) -> None:
    exe = build_c("deep_calls.c", tmp_path)
    elf = ElfSymbols(str(exe))
    assert _check(elf, str(exe), ".symtab") > 5
