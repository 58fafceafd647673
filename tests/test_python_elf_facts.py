"""Detection's ELF facts: the symbols it looks up in real binaries are what readelf reads, and the facts of files
read once stay while they are used (least recently used out, not every file read again at a bound).

The binaries are this machine's: pyenv's interpreters (2.7 and 3.6-3.13: their shared libpython and executables),
Debian's static python3, and binaries without Python (coreutils, libc, gcc's cc1 when installed: a 1.3 MB .dynstr).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from pathlib import Path

import pytest

from profiler.python import detect
from symbolizer.elffile import ElfFile

PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
NAMES = {n.decode() for n in detect._SYMBOLS}


def binaries() -> list[str]:
    found = sorted({os.path.realpath(p) for p in [
        *glob.glob(str(PYENV / "*/lib/libpython*.so.1.0")), *glob.glob(str(PYENV / "*/bin/python[23].*[0-9]")),
        "/usr/bin/python3", "/usr/bin/sort", "/usr/bin/dash", "/lib/x86_64-linux-gnu/libc.so.6",
        *glob.glob("/usr/lib/gcc/x86_64-linux-gnu/*/cc1")] if os.path.isfile(p)})
    return found


def readelf_symbols(path: str, table: str) -> dict[str, int]:
    """The defined entries of `table` named as detection's names, by readelf (the last entry of a name wins)."""
    flag = "--dyn-syms" if table == ".dynsym" else "--syms"
    out = subprocess.run(["readelf", "-W", flag, path], capture_output=True, text=True, check=True).stdout
    got: dict[str, int] = {}
    section = None
    for line in out.splitlines():
        if line.startswith("Symbol table"):
            section = re.search(r"'([^']+)'", line)
            section = section.group(1) if section else None
            continue
        if section != table:
            continue
        f = line.split()
        if len(f) >= 8 and f[0].endswith(":") and f[6] != "UND" and f[7] in NAMES:
            got[f[7]] = int(f[1], 16)
    return got


@pytest.mark.parametrize("path", binaries())
def test_the_symbols_found_are_readelfs(path: str) -> None:
    with open(path, "rb") as f:
        elf = ElfFile(f)
        for table in (".dynsym", ".symtab"):
            assert detect._find_symbols(elf, table) == readelf_symbols(path, table), (path, table)


def test_the_interpreters_are_among_them() -> None:
    """The check above is not vacuous: the interpreters' _PyRuntime is found (in one of the tables)."""
    found = [p for p in binaries() if "python" in os.path.basename(p)]
    assert len(found) >= 8, found
    with_runtime = 0
    for path in found:
        with open(path, "rb") as f:
            elf = ElfFile(f)
            if "_PyRuntime" in {**detect._find_symbols(elf, ".symtab"), **detect._find_symbols(elf, ".dynsym")}:
                with_runtime += 1
    assert with_runtime >= 6


def test_facts_in_use_are_kept_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    files = ["/usr/bin/sort", "/usr/bin/dash", "/usr/bin/python3", "/lib/x86_64-linux-gnu/libc.so.6"]
    ids = {p: detect._identity(p) for p in files}
    assert len(set(ids.values())) == 4
    reads: list[str] = []
    real = detect._read_elf_facts

    def counted(path: str) -> detect._ElfFacts:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(detect, "_FACTS", {})
    monkeypatch.setattr(detect, "_FACTS_KEPT", 3)
    monkeypatch.setattr(detect, "_read_elf_facts", counted)
    sort, dash, python3, libc = files
    first = detect._elf_facts(sort, *ids[sort])
    detect._elf_facts(dash, *ids[dash])
    detect._elf_facts(python3, *ids[python3])
    assert detect._elf_facts(sort, *ids[sort]) is first  # used again: now the most recent
    detect._elf_facts(libc, *ids[libc])  # past the bound: dash, the least recently used, goes
    assert reads == [sort, dash, python3, libc]
    detect._elf_facts(sort, *ids[sort])
    detect._elf_facts(python3, *ids[python3])
    assert reads == [sort, dash, python3, libc]  # neither read again
    detect._elf_facts(dash, *ids[dash])
    assert reads == [sort, dash, python3, libc, dash]
    assert len(detect._FACTS) == 3
