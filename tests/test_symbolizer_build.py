"""Build and run the symbolizer's C fixtures (tests/fixtures/*.c) in a temporary directory.

Binaries are never committed: each session compiles them from source with gcc, and the
binutils (`nm`, `addr2line`, `readelf`) serve as the oracle for ELF addresses and names.
The other symbolizer and procmaps tests import these helpers; the tests here check that
the fixtures have the shapes those tests rely on.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
LIB_BASE = 0x200000  # the library is linked away from 0: its segments' vaddr != file offset


@dataclass(frozen=True)
class Binaries:
    pie: Path
    nopie: Path
    lib: Path
    with_lib: Path  # PIE linked against lib (rpath set)
    stripped: Path  # a stripped copy of pie


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian gcc / binutils)")


def gcc(out: Path, *args: str) -> Path:
    subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-Wl,--build-id", "-o", str(out), *args],
                   check=True, capture_output=True)
    return out


def build_all(d: Path) -> Binaries:
    need_tools("gcc", "nm", "addr2line", "strip", "objcopy")
    src, lib_src = str(FIXTURES / "symprog.c"), str(FIXTURES / "symlib.c")
    lib = gcc(d / "libsymlib.so", "-fPIC", "-shared", f"-Wl,-Ttext-segment={LIB_BASE:#x}", lib_src)
    stripped = d / "pie-stripped"
    pie = gcc(d / "pie", "-fPIE", "-pie", src)
    shutil.copy(pie, stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    return Binaries(
        pie=pie,
        nopie=gcc(d / "nopie", "-fno-pie", "-no-pie", src),
        lib=lib,
        with_lib=gcc(d / "pie-with-lib", "-fPIE", "-pie", "-DWITH_LIB", src, f"-L{d}", "-lsymlib",
                     f"-Wl,-rpath,{d}"),
        stripped=stripped,
    )


@dataclass
class Running:
    proc: subprocess.Popen
    addresses: dict[str, int]  # function name -> runtime address, as the program printed it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=10)


@contextmanager
def running(exe: Path) -> Iterator[Running]:
    """Run a fixture program until it printed its function addresses; stop it on exit."""
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    addresses: dict[str, int] = {}
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "ready":
                break
            name, addr = line.split()
            addresses[name] = int(addr, 16)
        else:
            raise RuntimeError(f"{exe} exited with {proc.wait()} before it was ready")
        r = Running(proc, addresses)
        yield r
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def nm_functions(path: Path, *, dynamic: bool = False) -> dict[str, tuple[int, int]]:
    """Function symbols (T/t/W/i) with sizes from `nm -S` (`-D`: the dynamic table): name -> (ELF
    address, size). Version suffixes (`memcpy@@GLIBC_2.14`) are dropped, as the symbolizer does."""
    out = subprocess.run(["nm", "-S", "--defined-only", *(["-D"] if dynamic else []), str(path)],
                         capture_output=True, text=True, check=True).stdout
    funcs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "TtWwi":
            funcs[parts[3].split("@")[0]] = (int(parts[0], 16), int(parts[1], 16))
    return funcs


def addr2line_functions(path: Path, addresses: list[int]) -> list[str]:
    """`addr2line -f` names (from DWARF) for ELF addresses."""
    out = subprocess.run(["addr2line", "-f", "-e", str(path), *(f"{a:#x}" for a in addresses)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return out[0::2]


def build_id(path: Path) -> str | None:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "Build ID:" in line:
            return line.split("Build ID:")[1].strip()
    return None


_built: dict[str, Binaries] = {}


def built(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    """The fixtures, built once per session however many test modules ask for them."""
    if "b" not in _built:
        _built["b"] = build_all(tmp_path_factory.mktemp("symbolizer-fixtures"))
    return _built["b"]


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    return built(tmp_path_factory)


def _load_segments(path: Path) -> list[tuple[int, int, str]]:
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    return [(int(p[1], 16), int(p[2], 16), " ".join(p[6:-1])) for p in (line.split() for line in out.splitlines())
            if p and p[0] == "LOAD"]


def _elf_type(path: Path) -> str:
    out = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    return next(line.split(":")[1].split()[0] for line in out.splitlines() if line.strip().startswith("Type:"))


def test_fixtures_have_the_shapes_the_symbolizer_tests_need(binaries: Binaries) -> None:
    assert _elf_type(binaries.pie) == "DYN" and _elf_type(binaries.nopie) == "EXEC"
    assert _elf_type(binaries.lib) == "DYN"
    code = [(off, vaddr) for off, vaddr, flags in _load_segments(binaries.lib) if "E" in flags]
    assert code and all(vaddr - off == LIB_BASE for off, vaddr in code)  # vaddr != file offset
    assert "static_leaf" in nm_functions(binaries.pie)
    assert build_id(binaries.pie) and build_id(binaries.stripped) == build_id(binaries.pie)
    assert subprocess.run(["nm", str(binaries.stripped)], capture_output=True, text=True).stdout.strip() == ""
    with running(binaries.with_lib) as r:
        assert set(r.addresses) == {"static_leaf", "global_work", "main", "lib_static_leaf", "lib_global_work"}
