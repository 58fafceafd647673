"""PLT stubs named `name@plt` (symbolizer.plt) against objdump, the oracle: its `<name@plt>` headers.

Programs are built with gcc in the layouts real toolchains write (lazy `.plt` after PLT0, `-z now`, IBT's
`.plt.sec`, `.plt.got`, PIE or not, `-fno-plt`, a shared library, i386), and Debian's own binaries are
read as they ship. Every PLT entry objdump names must be in the table under that name, covering the whole
entry; no other `@plt` name may appear; the ordinary symbols stay as readelf lists them.
"""

from __future__ import annotations

import pickle
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from podflame.model import Frame
from profiler.procmaps import MapsCache
from symbolizer import Symbolizer
from symbolizer.diskcache import DiskCache
from symbolizer.elf import ElfSymbols
from symbolizer.normalize import elf_address
from symbolizer.ranges import AddressRanges
from tests.test_symbol_tables import _oracle
from tests.test_symbolizer import native, resolve
from tests.test_symbolizer_build import need_tools, nm_functions, running

PLT_C = r"""
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct timespec ts;
    char buf[256];
    volatile size_t len = 8 + (size_t)argc;
    unsigned long sum = 0;
    int (*volatile announce)(const char *) = puts;  /* taken and called: a GLOB_DAT slot, .plt.got (PIE) */
    for (int i = 0; i < 1000; i++) {  /* a hot loop through the PLT */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        memcpy(buf, argv[0], len);
        buf[len - 1 - (size_t)(i & 3)] = 0;
        sum += strlen(buf) + (unsigned long)ts.tv_nsec;
    }
    printf("main %p\n", (void *)main);
    puts(sum & 1 ? "parity 0x1" : "parity 0x0");  /* a "name address" line, as running() reads them */
    announce("ready");
    fflush(stdout);
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
"""

LIB32_C = "int lf1(int x) { return x + 1; }\nint lf2(int x) { return x * 2; }\n"
MAIN32_C = """
int lf1(int); int lf2(int);
int (*p)(int) = lf2;
void _start(void) { volatile int r = lf1(3) + lf2(4) + p(1); for (;;) {} }
"""

VARIANTS = {  # name: (gcc flags, PLT sections the layout must have)
    "pie": (["-O2"], {".plt", ".plt.got"}),
    "nopie": (["-O2", "-no-pie"], {".plt"}),
    "now": (["-O2", "-Wl,-z,now"], {".plt", ".plt.got"}),
    "ibt": (["-O2", "-fcf-protection=full", "-Wl,-z,ibtplt"], {".plt", ".plt.sec", ".plt.got"}),
    "ibt-now": (["-O2", "-fcf-protection=full", "-Wl,-z,ibtplt", "-Wl,-z,now"], {".plt", ".plt.sec", ".plt.got"}),
    "ibt-nopie": (["-O2", "-fcf-protection=full", "-Wl,-z,ibtplt", "-no-pie"], {".plt", ".plt.sec"}),
    "noplt": (["-O2", "-fno-plt"], {".plt.got"}),
    "shared": (["-O2", "-fPIC", "-shared"], {".plt", ".plt.got"}),
}
SYSTEM = ["/usr/bin/python3.11", "/usr/bin/perl", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
          "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/bash"]
_HEADER = re.compile(r"^([0-9a-f]+) <(.+@plt)>:$", re.M)
_ABS = re.compile(r"^\*ABS\*\+0x([0-9a-f]+)@plt$")


def objdump_plt(path: Path | str) -> dict[int, str]:
    """objdump's synthetic `<name@plt>` symbols: ELF address -> name."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {int(a, 16): n for a, n in _HEADER.findall(out)}


def sections(path: Path | str) -> dict[str, tuple[int, int]]:
    """Section name -> (address, size), from readelf."""
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    found = {}
    for m in re.finditer(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", out):
        found[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16))
    return found


def ifuncs(path: Path | str) -> dict[int, set[str]]:
    """IFUNC symbols of the dynamic table: address -> names (nm -D type `i`)."""
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True).stdout
    found: dict[int, set[str]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "i":
            found.setdefault(int(parts[0], 16), set()).add(parts[2].split("@")[0])
    return found


def check_plt(path: Path | str, elf: ElfSymbols) -> dict[int, str]:
    """Our `@plt` ranges against objdump's: same entries, same names (an IRELATIVE entry, `*ABS*+0x<resolver>`
    to objdump, named after the IFUNC at its resolver), each covering its whole entry. Returns ours."""
    want = objdump_plt(path)
    r = elf.ranges
    ours = {s: (e, n) for s, e, n in zip(r.starts, r.ends, r.names, strict=True) if n.endswith("@plt")}
    assert set(ours) == set(want), (sorted(set(want) - set(ours))[:5], sorted(set(ours) - set(want))[:5])
    by_resolver = None
    for start, name in want.items():
        end, got = ours[start]
        if (absolute := _ABS.match(name)) is not None:
            by_resolver = by_resolver or ifuncs(path)
            candidates = by_resolver.get(int(absolute.group(1), 16))
            assert candidates, name  # every IRELATIVE target of these binaries is an exported IFUNC
            assert got[:-4] in candidates, (name, got)
        else:
            assert got == name, (hex(start), name, got)
        assert end - start in (8, 16), (hex(start), end - start)
        assert elf.lookup(start) == elf.lookup((start + end) // 2) == elf.lookup(end - 1) == got
    return {s: n for s, (_, n) in ours.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_tools("gcc", "objdump", "readelf", "nm")
    d = tmp_path_factory.mktemp("plt")
    src = d / "plt.c"
    src.write_text(PLT_C)
    out = {}
    for name, (flags, _) in VARIANTS.items():
        out[name] = d / name
        subprocess.run(["gcc", *flags, "-o", str(out[name]), str(src)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_plt_entry_of_a_gcc_build_is_named_as_objdump_names_it(built: dict[str, Path], variant: str) -> None:
    exe = built[variant]
    secs = sections(exe)
    assert VARIANTS[variant][1] <= secs.keys(), sorted(s for s in secs if "plt" in s)
    elf = ElfSymbols(str(exe))
    ours = check_plt(exe, elf)
    names = set(ours.values())
    if variant == "noplt":  # calls go through the GOT: no stub for the libc functions, __cxa_finalize's stays
        assert not names & {"clock_gettime@plt", "memcpy@plt", "strlen@plt"} and ours
    else:
        assert {"clock_gettime@plt", "memcpy@plt", "strlen@plt"} <= names, names
    where = {n: next(s for s, (a, size) in secs.items() if s.startswith(".plt") and a <= start < a + size)
             for start, n in ours.items()}
    if ".plt.sec" in secs:  # the calls land in the second PLT
        assert where["clock_gettime@plt"] == ".plt.sec", where
    if variant in ("pie", "now", "ibt", "ibt-now", "shared"):  # puts is called and its address loaded
        assert where["puts@plt"] == ".plt.got", where
    if ".plt" in secs and variant != "noplt":
        plt0 = secs[".plt"][0]
        assert elf.lookup(plt0) is None and elf.lookup(plt0 + 15) is None  # PLT0 is no function's stub
    if ".plt.sec" in secs:  # IBT's lazy push stubs in .plt are no stub a call lands in: unnamed, as objdump
        start, size = secs[".plt"]
        assert all(elf.lookup(a) is None for a in range(start, start + size))
    # the ordinary symbols are readelf's, unchanged
    r = elf.ranges
    plain = [x for x in zip(r.starts, r.ends, r.names, strict=True) if not x[2].endswith("@plt")]
    assert plain == _oracle(str(exe), ".symtab")


def test_stripped_and_debug_file_tables_name_the_plt_from_the_binary(built: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """.dynsym alone (stripped), and .symtab from a build-id debug file whose PLT and relocations are NOBITS:
    the stubs are named from the binary's own sections either way."""
    stripped = tmp_path / "stripped"
    shutil.copy(built["ibt"], stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    elf = ElfSymbols(str(stripped))
    check_plt(built["ibt"], elf)
    assert elf.symbol_source == "dynsym"
    bid = elf.build_id
    assert bid
    debug = tmp_path / "debug" / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
    debug.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(built["ibt"]), str(debug)], check=True)
    with_debug = ElfSymbols(str(stripped), debug_dirs=[str(tmp_path / "debug")])
    ours = check_plt(built["ibt"], with_debug)
    assert with_debug.symbol_source == str(debug) and "clock_gettime@plt" in ours.values()
    assert with_debug.lookup(nm_functions(built["ibt"])["main"][0]) == "main"


@pytest.mark.parametrize("path", SYSTEM)
def test_system_binaries_plt_entries_match_objdump(path: str) -> None:
    """Debian's binaries as they ship: python3.11 (non-PIE, ~500 stubs), perl and bash (PIE, .plt.got),
    libstdc++ (1000 stubs, C++ names), libc (IRELATIVE stubs of its own IFUNCs: `strnlen@plt`)."""
    elf = ElfSymbols(path, debug_dirs=["/usr/lib/debug"])
    ours = check_plt(path, elf)
    assert len(ours) > 50


def test_i386_plt_entries_absolute_and_ebx_relative(tmp_path: Path) -> None:
    """i386: `jmp *abs32` (non-PIC), `jmp *disp(%ebx)` (PIE, a shared library), endbr32 + .plt.sec (IBT).
    Linked without libc (no 32-bit multilib here): a shared library of our own provides the imports."""
    need_tools("gcc", "objdump")
    (tmp_path / "lib.c").write_text(LIB32_C)
    (tmp_path / "main.c").write_text(MAIN32_C)
    base = ["gcc", "-m32", "-O2", "-nostdlib"]
    lib = tmp_path / "lib32.so"
    subprocess.run([*base, "-fPIC", "-shared", "-o", str(lib), str(tmp_path / "lib.c")], check=True)
    builds = {"exec": ["-fno-pie", "-no-pie"], "pie": ["-fPIE", "-pie"],
              "ibt": ["-fPIE", "-pie", "-fcf-protection=full", "-Wl,-z,ibtplt"], "shared": ["-fPIC", "-shared"]}
    for name, flags in builds.items():
        out = tmp_path / name
        subprocess.run([*base, *flags, "-o", str(out), str(tmp_path / "main.c"), str(lib)], check=True)
        ours = check_plt(out, ElfSymbols(str(out)))
        assert set(ours.values()) == {"lf1@plt", "lf2@plt"}, (name, ours)


def test_a_sample_in_a_plt_stub_of_a_running_process_is_named(built: dict[str, Path], tmp_path: Path) -> None:
    """End to end: runtime addresses inside the stubs of a live PIE (IBT, -z now: .plt.sec) and a non-PIE
    resolve through the Symbolizer to `name@plt`; through a disk cache too, where an entry an older reader
    stored (format 1: no PLT names, a (source, table) pair) is read again instead of reused."""
    cache = DiskCache(str(tmp_path / "cache"))
    for variant in ("ibt-now", "nopie"):
        exe = built[variant]
        plt = {n: a for a, n in objdump_plt(exe).items()}
        main_elf = nm_functions(exe)["main"][0]
        elf = ElfSymbols(str(exe))
        table = elf.ranges
        older = AddressRanges([x for x in zip(table.starts, table.ends, table.names, strict=True)
                               if not x[2].endswith("@plt")])
        assert elf.build_id
        entry = Path(cache.root) / elf.build_id[:2] / elf.build_id / "symbols.pkl"
        entry.parent.mkdir(parents=True)
        entry.write_bytes(pickle.dumps(("symtab", older)))  # what the reader before SYMBOLS_FORMAT 2 stored
        for disk_cache in (None, cache):
            maps = MapsCache()
            sym = Symbolizer(maps, disk_cache=disk_cache)
            with running(exe) as r:
                maps.refresh([r.pid])
                bias = r.addresses["main"] - main_elf
                frames: list[Frame] = []
                for name in ("clock_gettime@plt", "memcpy@plt", "strlen@plt"):
                    frames += [native(maps, r.pid, plt[name] + bias), native(maps, r.pid, plt[name] + bias + 9)]
                m = frames[0].mapping
                assert m is not None and m.path == str(exe)
                assert elf_address(frames[0].address, m, elf.elf_type, elf.segments) == plt["clock_gettime@plt"]
                got = [resolve(sym, r.pid, [f])[0].names() for f in frames]
            assert got == [(n,) for n in ("clock_gettime@plt",) * 2 + ("memcpy@plt",) * 2 + ("strlen@plt",) * 2]
    assert cache.stats["symbols_hits"] == 0  # both stale entries were read again and rewritten
    again = ElfSymbols(str(built["nopie"]))
    again.load_symbols = cache.symbols_loader(again)
    assert "strlen@plt" in again.ranges.names and cache.stats["symbols_hits"] == 1


def test_cpp_plt_names_are_demangled() -> None:
    from symbolizer.demangle import demangle

    assert demangle("_ZdaPv@plt") == "operator delete[](void*)@plt"
    assert demangle("clock_gettime@plt") == "clock_gettime@plt"


def test_a_corrupt_plt_or_relocation_table_leaves_the_rest_of_the_table(built: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    """Garbage in the second PLT, .plt.got or the PLT's relocations: no exception, the ordinary
    symbols as readelf lists them, and no `@plt` name that objdump does not give."""
    exe = built["ibt"]
    secs = sections(exe)
    out = subprocess.run(["readelf", "-SW", str(exe)], capture_output=True, text=True, check=True).stdout
    offsets = {m.group(1): int(m.group(2), 16)
               for m in re.finditer(r"\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)", out)}
    rng = random.Random(21)
    for victim in (".plt.sec", ".rela.plt", ".plt.got"):
        data = bytearray(exe.read_bytes())
        start, size = offsets[victim], secs[victim][1]
        data[start:start + size] = bytes(rng.randrange(256) for _ in range(size))
        bad = tmp_path / f"bad{victim}"
        bad.write_bytes(bytes(data))
        elf = ElfSymbols(str(bad))
        r = elf.ranges
        names = {n for n in r.names if n.endswith("@plt")}
        assert names <= set(objdump_plt(exe).values()), (victim, names)
        plain = [x for x in zip(r.starts, r.ends, r.names, strict=True) if not x[2].endswith("@plt")]
        assert plain == _oracle(str(exe), ".symtab"), victim
