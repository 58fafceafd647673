"""DWARF features beyond the corpus comparison: inline frames of a known program, aranges fallback,
.gnu_debuglink, the persistent per-build-id cache, the agent's Symbolizer with DWARF, the CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from podflame.cli import main
from podflame.model import Frame, FrameKind, Mapping, Profile
from symbolizer import Symbolizer
from symbolizer.demangle import demangle
from symbolizer.diskcache import DiskCache
from symbolizer.dwarf import DwarfInfo
from symbolizer.elf import ElfSymbols
from symbolizer.resolve import lines_at, open_dwarf
from symbolizer.tool import BinaryTool
from tests.test_dwarf_corpus import addr2line, build_corpus, functions
from tests.test_symbolizer_build import build_id, need_tools, nm_functions

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dwarf-features")
    return {p.name: p for p in build_corpus(d)}


def deep_addresses(path: Path) -> list[int]:
    """Addresses of hot_loop where addr2line sees the three-deep inline chain mix <- mix_twice <- deep_inline."""
    start, size = nm_functions(path)["hot_loop"]
    addrs = list(range(start, start + size))
    return [a for a, frames in zip(addrs, addr2line(path, addrs), strict=True)
            if [f for f, _ in frames] == ["mix", "mix_twice", "deep_inline", "hot_loop"]]


def test_inline_chain_innermost_first_with_call_sites(built: dict[str, Path]) -> None:
    pie = built["dwarf-pie"]
    deep = deep_addresses(pie)
    assert deep, "gcc -O2 no longer inlines mix into hot_loop three deep"
    elf = ElfSymbols(str(pie))
    lines = lines_at(elf, open_dwarf(elf), deep[0], demangle)
    assert [ln.function for ln in lines] == ["mix", "mix_twice", "deep_inline", "hot_loop"]
    header = str(FIXTURES / "dwarf_inlines.h")
    src = (FIXTURES / "dwarf_inlines.h").read_text().splitlines()
    # outer frames point at the call sites: mix_twice calls mix, deep_inline calls mix_twice, hot_loop deep_inline
    assert lines[1].file == header and "mix(" in src[lines[1].line - 1]
    assert lines[2].file == header and "mix_twice(" in src[lines[2].line - 1]
    prog = (FIXTURES / "dwarfprog.c").read_text().splitlines()
    assert lines[3].file == str(FIXTURES / "dwarfprog.c") and "deep_inline(" in prog[lines[3].line - 1]
    assert lines[0].file == header and 7 <= lines[0].line <= 11  # inside mix's body


def test_missing_aranges_fall_back_to_cu_headers(built: dict[str, Path], tmp_path: Path) -> None:
    need_tools("objcopy")
    src = built["dwarf-nopie"]
    stripped = tmp_path / "no-aranges"
    subprocess.run(["objcopy", "--remove-section=.debug_aranges", str(src), str(stripped)], check=True)
    assert ".debug_aranges" not in subprocess.run(["readelf", "-S", str(stripped)], capture_output=True,
                                                  text=True).stdout
    addrs = [a + s // 2 for a, s in functions(src)]
    with_ar, without = DwarfInfo(str(src)), DwarfInfo(str(stripped))
    assert [with_ar.lookup(a) for a in addrs] == [without.lookup(a) for a in addrs]
    assert any(r and r[0] for r in map(without.lookup, addrs))
    assert without.stats["cu_scans"] == 1 and with_ar.stats["cus_decoded"] >= 1


def test_gnu_debuglink_separate_file(built: dict[str, Path], tmp_path: Path) -> None:
    need_tools("objcopy", "strip")
    exe = tmp_path / "bin" / "prog"
    exe.parent.mkdir()
    shutil.copy(built["dwarf-pie"], exe)
    debug = exe.parent / ".debug" / "prog.debug"
    debug.parent.mkdir()
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(debug)], check=True)
    subprocess.run(["strip", "--strip-debug", str(exe)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(exe)], check=True)
    elf = ElfSymbols(str(exe), debug_dirs=[str(tmp_path / "nowhere")])
    assert elf.dwarf_file() == str(debug)
    deep = deep_addresses(built["dwarf-pie"])[0]
    assert [ln.function for ln in lines_at(elf, open_dwarf(elf), deep, demangle)][:2] == ["mix", "mix_twice"]
    debug.write_bytes(debug.read_bytes() + b"\0")  # another build's debug file: the CRC says no
    assert ElfSymbols(str(exe), debug_dirs=[]).dwarf_file() is None


def test_disk_cache_answers_a_new_process_without_decoding(built: dict[str, Path], tmp_path: Path) -> None:
    path = built["dwarf-cxx"]
    bid = build_id(path)
    addrs = [a + s // 3 for a, s in functions(path)]
    cache = DiskCache(str(tmp_path / "cache"))
    first = DwarfInfo(str(path), **cache.hooks(bid))
    want = [first.lookup(a) for a in addrs]
    # every CU decoded is stored (whole, or a big one's function ranges: its STL-heavy CU is over
    # dwarf.LAZY_CU_BYTES), and every function decoded in a big CU (tests/test_dwarf_persist.py)
    assert first.stats["cus_decoded"] >= 1 and cache.stats["cu_stored"] == first.stats["cus_decoded"]
    assert first.stats["fns_decoded"] >= 1 and cache.stats["fn_stored"] == first.stats["fns_decoded"]
    again = DiskCache(str(tmp_path / "cache"))
    second = DwarfInfo(str(path), **again.hooks(bid))
    assert [second.lookup(a) for a in addrs] == want
    # a big CU whose functions were reached enough was then decoded whole: one entry, its functions' dropped
    made_whole = first.stats["cus_made_whole"]
    assert second.stats["cus_decoded"] == 0 and second.stats["cus_loaded"] == first.stats["cus_decoded"] - made_whole
    left = len(list((tmp_path / "cache").rglob("fn-*.pkl")))
    assert second.stats["fns_decoded"] == 0 and second.stats["fns_loaded"] == left
    assert left == (0 if made_whole else first.stats["fns_decoded"])
    assert second._reader is None  # the DWARF sections were never read
    for f in (tmp_path / "cache").rglob("cu-*.pkl"):  # torn files are ignored and decoded again
        f.write_bytes(b"garbage")
    third = DwarfInfo(str(path), **DiskCache(str(tmp_path / "cache")).hooks(bid))
    assert [third.lookup(a) for a in addrs] == want and third.stats["cus_decoded"] >= 1


def test_disk_cache_is_bounded(tmp_path: Path, built: dict[str, Path]) -> None:
    path = built["dwarf-cxx"]
    cache = DiskCache(str(tmp_path / "c"), max_bytes=1)
    for fake in ("aa" * 20, "bb" * 20, "cc" * 20):
        DwarfInfo(str(path), **cache.hooks(fake)).lookup(nm_functions(path)["main"][0])
    cache.trim()
    assert len(cache.usage()) <= 1


def test_agent_symbolizer_gives_inline_frames_for_a_mapped_binary(built: dict[str, Path]) -> None:
    pie = built["dwarf-pie"]
    deep = deep_addresses(pie)[0]
    base = 0x5555_5555_4000
    elf = ElfSymbols(str(pie))
    text = next(s for s in elf.segments if s.executable)
    m = Mapping(base + text.vaddr, base + text.vaddr + text.memsz, text.offset, str(pie), elf.build_id)
    leaf = Frame(base + deep, m, FrameKind.NATIVE)
    p = Profile(labels={}, start_ns=0, duration_ns=1, period_ns=1)
    p.add((leaf,), 3)
    sym = Symbolizer(kallsyms_path="/dev/null")
    out = sym.symbolize(p)
    (stack,) = out.samples
    assert [ln.function for ln in stack[0].lines] == ["mix", "mix_twice", "deep_inline", "hot_loop"]
    assert stack[0].names() == ("hot_loop", "deep_inline", "mix_twice", "mix")  # root first in a stack
    assert sym.stats()["dwarf_resolved"] == 1


def test_cli_prints_blocks_like_addr2line(built: dict[str, Path]) -> None:
    pie = built["dwarf-pie"]
    deep = deep_addresses(pie)[0]
    r = CliRunner().invoke(main, ["symbolize", "--binary", str(pie), "--inlines", hex(deep), "0x10"])
    assert r.exit_code == 0, r.output
    blocks = r.output.split("\n\n")
    want = addr2line(pie, [deep, 0x10])
    assert [ln.split("\t") for ln in blocks[0].splitlines()] == [[f, loc] for f, loc in want[0]]
    assert blocks[1].strip() == "??\t??:0"
    r2 = CliRunner().invoke(main, ["symbolize", "--binary", str(pie)], input=f"{deep:x}\n")
    assert r2.exit_code == 0 and r2.output == blocks[0].splitlines()[0] + "\n"  # innermost only without --inlines


def test_console_script_symbolize_without_click_matches_the_click_command(built: dict[str, Path]) -> None:
    """`podflame symbolize` (podflame.entry) parses its own arguments to skip importing click; its
    output must be the click command's, and anything it does not handle must reach click."""
    import sys

    pie = str(built["dwarf-pie"])
    deep = deep_addresses(built["dwarf-pie"])[0]
    script = [sys.executable, "-c", "import sys; from podflame.entry import main; sys.argv[0] = 'podflame'; main()"]
    for args, stdin in [(["--binary", pie, "--inlines", hex(deep), "0x10"], ""),
                        (["--inlines", f"--binary={pie}", "--", hex(deep)], ""),
                        (["--binary", pie], f"{deep:x}\n0x10\n"),
                        (["--binary", pie], "")]:
        want = CliRunner().invoke(main, ["symbolize", *args], input=stdin)
        got = subprocess.run([*script, "symbolize", *args], input=stdin, capture_output=True, text=True)
        assert (got.returncode, got.stdout) == (want.exit_code, want.output), args
    lean = "import sys; from podflame.entry import main; main(); print(sorted(m for m in sys.modules if 'click' in m))"
    got = subprocess.run([sys.executable, "-c", lean, "symbolize", "--binary", pie, hex(deep)],
                         capture_output=True, text=True)
    assert got.stdout.splitlines()[-1] == "[]"  # click was never imported
    for args, stdin, code, says in [(["--help"], "", 0, "Usage: podflame symbolize"),
                                    ([], "", 2, "Missing option '--binary'"),
                                    (["--binary", pie, "--bogus"], "", 2, "No such option"),
                                    (["--binary", "/nonexistent"], "", 2, "does not exist"),
                                    (["--binary", pie], "zz\n", 2, "is not a hex ELF virtual address"),
                                    (["--binary", "/etc/hostname", "0x1"], "", 2, "Error:")]:  # not ELF: InvalidInput
        got = subprocess.run([*script, "symbolize", *args], input=stdin, capture_output=True, text=True)
        assert got.returncode == code and says in got.stdout + got.stderr, (args, got.stdout, got.stderr)


def test_demangling_cxx_and_rust() -> None:
    want = "std::vector<int, std::allocator<int> >::push_back(int const&)"
    assert demangle("_ZNSt6vectorIiSaIiEE9push_backERKi") == want
    assert demangle("_RNvCs1234_7mycrate3foo") == "mycrate::foo"
    # the legacy hash is dropped, as addr2line -C and perf print it
    assert demangle("_ZN4core3fmt9Formatter3pad17h0e6f1c4d7d5f4f5eE") == "core::fmt::Formatter::pad"
    assert demangle("_ZN6rpanic9leaf_work17h52f71c957690652cE.llvm.1234") == "rpanic::leaf_work"
    assert demangle("main") == "main" and demangle("_Znot a name") == "_Znot a name"


def test_cli_cache_dir_keeps_symbols_and_cus_for_the_next_process(built: dict[str, Path], tmp_path: Path) -> None:
    path = str(built["dwarf-cxx"])
    addrs = [a + s // 3 for a, s in functions(built["dwarf-cxx"])]
    first = BinaryTool(path, cache_dir=str(tmp_path))
    want = [first.frames(a) for a in addrs]
    assert first.elf.ranges and first.elf.symbol_source == "symtab"
    second = BinaryTool(path, cache_dir=str(tmp_path))
    assert [second.frames(a) for a in addrs] == want
    assert second.elf.ranges and second.elf.symbol_source == "cache (symtab)"
    assert second.dwarf.stats["cus_decoded"] == 0 and second.dwarf._reader is None


NESTED = r"""
#include <stdio.h>
__attribute__((noinline)) int outer(int n) {
    __attribute__((noinline)) int inner(int k) { int s = 0; for (int i = 0; i < k; i++) s += i * n; return s; }
    int t = 0;
    for (int i = 0; i < n; i++) t += inner(i);
    return t;
}
static inline int twice(int x) { return x * 2; }
int main(int argc, char **argv) { (void)argv; printf("%d\n", twice(outer(argc + 3))); return 0; }
"""


def test_decoding_one_function_at_a_time_agrees_with_decoding_the_whole_cu(built: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    src = tmp_path / "nested.c"
    src.write_text(NESTED)
    nested = tmp_path / "nested"
    subprocess.run(["gcc", "-O2", "-g", "-o", str(nested), str(src)], check=True, capture_output=True)
    for path in (nested, built["dwarf-cxx"], built["dwarf-pie"]):
        addrs = [a for start, size in functions(path) for a in range(start, start + size)]
        lazy = DwarfInfo(str(path))  # no disk cache: functions are decoded as lookups reach them
        whole = DwarfInfo(str(path), store_cu=lambda off, idx: None)  # a cache to fill: whole CUs
        assert [lazy.lookup(a) for a in addrs] == [whole.lookup(a) for a in addrs], path
    # a GCC nested function is a child of its host's DIE but its code lies outside the host's range:
    # no top-level function covers it, so that CU is decoded whole, and names it
    (start, _), = [(a, s) for a, s, name in nm_sized(nested) if name.startswith("inner")]
    lazy = DwarfInfo(str(nested))
    frames, _ = lazy.lookup(start + 2)
    assert [f.name for f in frames] == ["inner"] and lazy.cu(lazy._cu_for(start + 2)).code is not None


def nm_sized(path: Path) -> list[tuple[int, int, str]]:
    out = subprocess.run(["nm", "-S", "--defined-only", str(path)], capture_output=True, text=True).stdout
    return [(int(p[0], 16), int(p[1], 16), p[3]) for p in map(str.split, out.splitlines()) if len(p) == 4]


ASM_FUNCTION = """
    .text
    .globl spin_asm
    .type spin_asm, @function
    .globl zz_alias
    .type zz_alias, @function
zz_alias:
spin_asm:
    mov $100000000, %rcx
1:  dec %rcx
    jnz 1b
    ret
    .size spin_asm, .-spin_asm
    .size zz_alias, .-zz_alias
    .section .note.GNU-stack,"",@progbits
"""


def test_assembly_functions_are_dwarf_functions_like_addr2line_says(tmp_path: Path) -> None:
    """GNU as writes an assembly function's DW_AT_high_pc as DW_FORM_udata (DWARF 5, Debian 12's default); the
    reader dropped udata values, so such functions (libc's memcpy/memchr variants among them) had no DWARF
    function, only the line table's file:line. Two labels on one function are two DIEs over the same code
    (glibc's `__clone3`, `__GI___clone3`, `clone3`): addr2line names the last, and so do we."""
    need_tools("gcc", "addr2line")
    (tmp_path / "f.S").write_text(ASM_FUNCTION)
    (tmp_path / "m.c").write_text("void spin_asm(void);\nint main(void) { for (;;) spin_asm(); }\n")
    prog = tmp_path / "prog"
    subprocess.run(["gcc", "-O2", "-g", "-o", str(prog), str(tmp_path / "m.c"), str(tmp_path / "f.S")],
                   check=True, capture_output=True)
    start, size = nm_functions(prog)["spin_asm"]
    info = DwarfInfo(str(prog))
    addresses = list(range(start, start + size))
    for address, oracle in zip(addresses, addr2line(prog, addresses), strict=True):
        got = info.lookup(address)
        assert got is not None
        frames, (file, line) = got
        assert [f.name for f in frames] == [name for name, _ in oracle] == ["zz_alias"], hex(address)
        assert (file, line) == (str(tmp_path / "f.S"), int(oracle[0][1].rsplit(":", 1)[1])), hex(address)
