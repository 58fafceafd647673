"""Unwind tables (profiler/unwind) against binutils' readelf on real binaries.

The oracle is `readelf --debug-dump=frames-interp`: at every row boundary it prints, our decoded
rule rows must give the same CFA rule, rbp rule and return-address rule, and the compact table must
mean the same thing at that pc (and just before the next boundary, so merged rows are checked too).
`readelf -wf` (the raw instructions) tells which CFA expressions are the PLT's.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podflame.errors import BinaryFormatError
from profiler.unwind.build import build_table, find_cfi
from profiler.unwind.cache import FORMAT, TableCache
from profiler.unwind.cfi import (
    EXPRESSION,
    OFFSET,
    REGISTER,
    SAME,
    UNDEFINED,
    VAL_OFFSET,
    CfiFormatError,
    CfiSection,
    Cie,
    RuleT,
    State,
    run_program,
)
from profiler.unwind.table import (
    CFA_END,
    CFA_LEAF_REG,
    CFA_NONE,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    CFA_SIGNAL,
    CFA_UNSUPPORTED,
    RA_REG_SHIFT,
    RBP_AT_RBP,
    RBP_OFFSET,
    RBP_SAME,
    RBP_UNDEFINED,
    ROW,
    ROW_SIZE,
    UnwindTable,
)
from symbolizer.elffile import ElfFile
from tests.realsys import WORKLOADS, dwarf_libpython

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
DEBIAN_PYTHON = Path("/usr/bin/python3")
LIBSTDCXX = Path("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")
REGS = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)), "ra"]
_PLT_TEXT = re.compile(r"DW_CFA_def_cfa_expression \(DW_OP_breg7 \(rsp\): 8; DW_OP_breg16 \(rip\): 0; DW_OP_lit15; "
                       r"DW_OP_and; DW_OP_lit(10|11); DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus\)")
_ENTRY = re.compile(r"^([0-9a-f]{8,16}) ([0-9a-f]+) ([0-9a-f]+) (CIE|FDE) ?(.*)$")


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"oracle tools missing: {missing} (binutils, gcc are required, never skipped)"


# -- readelf ---------------------------------------------------------------------------------------

@dataclass
class ReadelfEntry:
    section: str
    offset: int
    kind: str
    aug: str = ""
    cie: int | None = None
    begin: int = 0
    end: int = 0
    rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    plt: int | None = None  # PLT threshold when the raw instructions hold the PLT expression
    other_expr: bool = False


def _readelf(option: str, path: Path) -> str:
    # readelf exits 1 without a message on Debian's libc (its .gnu_debuglink file is not installed):
    # the frames are printed all the same, so judge by the output
    got = subprocess.run(["readelf", "-W", option, str(path)], capture_output=True, text=True)
    assert "Contents of the " in got.stdout and "frame section" in got.stdout, got.stderr
    return got.stdout


def readelf_frames(path: Path) -> dict[tuple[str, int], ReadelfEntry]:
    _need("readelf")
    entries: dict[tuple[str, int], ReadelfEntry] = {}
    text = _readelf("--debug-dump=frames-interp", path)
    section, cur, cols = "", None, []
    for line in text.splitlines():
        if line.startswith("Contents of the "):
            section = line.split()[3]
            cur = None
            continue
        m = _ENTRY.match(line)
        if m:
            cur = ReadelfEntry(section, int(m[1], 16), m[4])
            rest = m[5]
            if cur.kind == "CIE":
                cur.aug = rest.split('"')[1] if '"' in rest else ""
            else:
                fm = re.search(r"cie=([0-9a-f]+) pc=([0-9a-f]+)\.\.([0-9a-f]+)", rest)
                assert fm, line
                cur.cie, cur.begin, cur.end = int(fm[1], 16), int(fm[2], 16), int(fm[3], 16)
            entries[(section, cur.offset)] = cur
            continue
        if cur is None:
            continue
        if line.startswith("   LOC"):
            cols = line.split()[1:]
            continue
        parts = re.sub(r"\br\d+ \((\w+)\)", r"\1", line).split()  # "r9 (r9)": a register rule, by name
        if parts and re.fullmatch(r"[0-9a-f]{16}", parts[0]) and len(parts) == len(cols) + 1:
            cur.rows.append((int(parts[0], 16), dict(zip(cols, parts[1:], strict=True))))
    raw = _readelf("-wf", path)
    section, cur_key = "", None
    for line in raw.splitlines():
        if line.startswith("Contents of the "):
            section = line.split()[3]
            continue
        m = _ENTRY.match(line)
        if m:
            cur_key = (section, int(m[1], 16))
            continue
        if cur_key in entries and "DW_CFA_def_cfa_expression" in line:
            pm = _PLT_TEXT.search(line)
            if pm:
                entries[cur_key].plt = int(pm[1])
            else:
                entries[cur_key].other_expr = True
    return entries


# -- our side as readelf prints it ------------------------------------------------------------------

def _rule_text(rule: RuleT) -> str:
    kind, val = rule
    if kind in (SAME, UNDEFINED):
        return "same"  # readelf prints an rbp nobody saved as "u"; rbp is callee-saved: unchanged
    if isinstance(val, bytes):
        return "exp" if kind == EXPRESSION else "vexp"
    if kind == OFFSET:
        return f"c{val:+d}"
    if kind == VAL_OFFSET:
        return f"v{val:+d}"
    if kind == REGISTER:
        return REGS[val]
    raise AssertionError(f"rule {rule}")


def _ra_text(rule: RuleT) -> str:
    return "u" if rule[0] == UNDEFINED else _rule_text(rule)


def _ours(state: State) -> tuple[str, str, str]:
    cfa_reg, cfa_off, cfa_expr, rbp, ra = state
    cfa = "exp" if cfa_expr is not None else f"{REGS[cfa_reg]}{cfa_off:+d}"
    return cfa, _rule_text(rbp), _ra_text(ra)


def _theirs(row: dict[str, str]) -> tuple[str, str, str]:
    rbp = row.get("rbp", "u")
    return row["CFA"], "same" if rbp in ("u", "s") else rbp, row.get("ra", "u")


def _expected_compact(entry: ReadelfEntry, cie: ReadelfEntry, row: dict[str, str]) -> tuple[int, int, int, int] | None:
    """What the compact row must say, from readelf's text alone; None when readelf cannot tell."""
    cfa, rbp, ra = _theirs(row)
    if "S" in cie.aug:
        return (CFA_SIGNAL, 0, RBP_SAME, 0)
    if ra == "u":
        return (CFA_END, 0, RBP_SAME, 0)
    ra_reg = REGS.index(ra) + 1 if ra in REGS[:16] else 0  # in a register (readelf_frames names it)
    if ra != "c-8" and not ra_reg:
        return (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
    if cfa == "exp":
        if entry.plt is not None and not entry.other_expr and not ra_reg:
            return (CFA_PLT, 8, RBP_SAME, entry.plt)
        return None if entry.plt is not None else (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
    m = re.fullmatch(r"(\w+)([+-]\d+)", cfa)
    if not m or m[1] not in REGS[:16] or not -0x8000 <= int(m[2]) < 0x8000:
        return (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
    kind = CFA_LEAF_REG | REGS.index(m[1]) if ra_reg or m[1] not in ("rsp", "rbp") else \
        CFA_RSP if m[1] == "rsp" else CFA_RBP
    if rbp == "same":
        return (kind, int(m[2]), RBP_SAME | ra_reg << RA_REG_SHIFT, 0)
    if re.fullmatch(r"c[+-]\d+", rbp):
        return (kind, int(m[2]), RBP_OFFSET | ra_reg << RA_REG_SHIFT, int(rbp[1:]))
    return (kind, int(m[2]), RBP_UNDEFINED | ra_reg << RA_REG_SHIFT, 0)


@dataclass
class Agreement:
    rule_rows: int = 0
    compact_rows: int = 0
    fdes: int = 0
    skipped_rows: int = 0
    mismatches: list[str] = field(default_factory=list)


def compare_with_readelf(path: Path) -> tuple[Agreement, UnwindTable]:
    entries = readelf_frames(path)
    table = build_table(str(path))
    with open(path, "rb") as f:
        ours: dict[str, CfiSection] = {name.replace("_hdr", ""): cfi for cfi, name, _ in find_cfi(ElfFile(f))}
    got = Agreement()
    fdes = sorted((e for e in entries.values() if e.kind == "FDE" and e.end > e.begin), key=lambda e: e.begin)
    starts = sorted(e.begin for e in fdes)
    for i, e in enumerate(fdes):
        cfi = ours[e.section]
        fde = cfi.fde(e.offset)
        assert (fde.pc_begin, fde.pc_end) == (e.begin, e.end), e
        cie = entries[(e.section, e.cie)]  # type: ignore[index]
        theirs = {loc: row for loc, row in e.rows if loc == e.begin or loc < e.end}
        if not theirs:  # no instructions: the CIE's initial row holds for the whole FDE
            theirs = {e.begin: cie.rows[-1][1]}
        mine = dict(cfi.rows(fde))
        got.fdes += 1
        if sorted(mine) != sorted(theirs):
            got.mismatches.append(f"{path.name} FDE {e.offset:#x}: row pcs {sorted(mine)} vs {sorted(theirs)}")
            continue
        for loc, row in theirs.items():
            got.rule_rows += 1
            if _ours(mine[loc]) != _theirs(row):
                got.mismatches.append(f"{path.name} {loc:#x}: {_ours(mine[loc])} vs readelf {_theirs(row)}")
        # the compact table, where this FDE alone describes the code
        overlapped = (i + 1 < len(fdes) and fdes[i + 1].begin < e.end) or (i and fdes[i - 1].end > e.begin)
        if overlapped:
            got.skipped_rows += len(theirs)
            continue
        locs = sorted(theirs)
        for j, loc in enumerate(locs):
            want = _expected_compact(e, cie, theirs[loc])
            if want is None:
                got.skipped_rows += 1
                continue
            last = (locs[j + 1] if j + 1 < len(locs) else e.end) - 1
            for pc in (loc, last):
                got.compact_rows += 1
                if table.lookup(pc) != want:
                    got.mismatches.append(f"{path.name} compact {pc:#x}: {table.lookup(pc)} vs {want}")
        k = starts.index(e.begin)
        if not (k + 1 < len(starts) and starts[k + 1] == e.end):  # a gap follows: no CFI there
            got.compact_rows += 1
            gap_at = e.end + 1 if cie.aug and "S" in cie.aug else e.end  # a signal FDE holds one byte more
            if table.lookup(gap_at) != (CFA_NONE, 0, RBP_SAME, 0):
                got.mismatches.append(f"{path.name} gap at {e.end:#x}: {table.lookup(e.end)}")
    return got, table


# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """unwind_shapes.c built the ways the tests need (from source, never committed)."""
    _need("gcc", "g++", "objcopy", "nm")
    out = tmp_path_factory.mktemp("unwind")
    src = WORKLOADS / "unwind_shapes.c"
    variants = {
        "o2": ["-O2"],
        "o2fp": ["-O2", "-fno-omit-frame-pointer"],
        "debugframe": ["-O2", "-g", "-fno-asynchronous-unwind-tables"],
        "nobuildid": ["-O2", "-Wl,--build-id=none"],
    }
    built = {}
    for name, flags in variants.items():
        exe = out / f"shapes-{name}"
        subprocess.run(["gcc", *flags, "-o", str(exe), str(src)], check=True)
        built[name] = exe
    cxx = out / "throw"
    subprocess.run(["g++", "-O2", "-o", str(cxx), str(WORKLOADS / "unwind_throw.cc")], check=True)
    built["cxx"] = cxx
    only = out / "shapes-debugframe-only"
    subprocess.run(["objcopy", "--remove-section=.eh_frame", "--remove-section=.eh_frame_hdr",
                    str(built["debugframe"]), str(only)], check=True)
    built["debugframe-only"] = only
    return built


def _symbols(path: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines()) if len(p) == 3}


# -- oracle tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["o2", "o2fp", "debugframe", "debugframe-only", "cxx"])
def test_agrees_with_readelf_on_built_programs(shapes: dict[str, Path], which: str) -> None:
    got, table = compare_with_readelf(shapes[which])
    assert got.mismatches == []
    assert got.fdes >= 5 and got.rule_rows >= 15 and got.compact_rows >= 30, got
    assert table.count > 0


@pytest.mark.parametrize("which", ["libc", "debian-python3", "libstdc++", "pyenv-libpython3.11"])
def test_agrees_with_readelf_on_system_binaries(which: str) -> None:
    path = {"libc": LIBC, "debian-python3": DEBIAN_PYTHON, "libstdc++": LIBSTDCXX}.get(which) or dwarf_libpython()
    assert path is not None and path.exists(), f"{which} is part of these machines (docs: ENVIRONMENT.md)"
    got, table = compare_with_readelf(path)
    assert got.mismatches[:20] == []
    assert got.fdes > 1000 and got.rule_rows > 10_000 and got.compact_rows > 20_000, got
    assert table.source == ".eh_frame_hdr"


def test_sections_used(shapes: dict[str, Path]) -> None:
    assert build_table(str(shapes["o2"])).source == ".eh_frame_hdr"
    # crt1.o's _start keeps .eh_frame; the program's own functions are only in .debug_frame
    assert build_table(str(shapes["debugframe"])).source == ".eh_frame_hdr+.debug_frame"
    assert build_table(str(shapes["debugframe-only"])).source == ".debug_frame"


# -- the shapes ------------------------------------------------------------------------------------

def _body(table: UnwindTable, start: int) -> list[tuple[int, int, int, int]]:
    arr = table.array()
    return [table.lookup(int(pc)) for pc in arr["pc"] if start <= pc < start + 64]  # type: ignore[misc]


def test_function_shapes(shapes: dict[str, Path]) -> None:
    for which in ("o2", "debugframe-only"):
        table = build_table(str(shapes[which]))
        sym = _symbols(shapes[which])
        assert table.lookup(sym["leaf"]) == (CFA_RSP, 8, RBP_SAME, 0)
        big = _body(table, sym["big_frame"])
        assert any(r[0] == CFA_RSP and 8192 < r[1] < 0x8000 for r in big), big
        huge = _body(table, sym["huge_frame"])
        assert any(r[0] == CFA_UNSUPPORTED for r in huge), huge  # 100000 does not fit the row's s16
    fp = build_table(str(shapes["o2fp"]))
    sym = _symbols(shapes["o2fp"])
    body = _body(fp, sym["big_frame"])
    assert (CFA_RBP, 16, RBP_OFFSET, -16) in body, body


def test_plt_and_start_rows(shapes: dict[str, Path]) -> None:
    exe = shapes["o2"]
    table = build_table(str(exe))
    with open(exe, "rb") as f:
        plt = ElfFile(f).section(".plt")
    assert plt is not None and plt.size >= 32
    for entry in range(16, plt.size, 16):  # PLT0 pushes twice; every later 16-byte entry is the expression
        assert table.lookup(plt.addr + entry) == (CFA_PLT, 8, RBP_SAME, 11)
    assert table.lookup(_symbols(exe)["_start"]) == (CFA_END, 0, RBP_SAME, 0)


def test_libc_signal_trampoline_and_outermost_frames() -> None:
    entries = readelf_frames(LIBC)
    table = build_table(str(LIBC))
    signal = [e for e in entries.values() if e.kind == "FDE" and "S" in entries[(e.section, e.cie)].aug]  # type: ignore[index]
    assert signal, "libc has __restore_rt's signal-frame FDE"
    for e in signal:
        assert table.lookup(e.begin)[0] == CFA_SIGNAL  # type: ignore[index]
        assert table.lookup(e.end - 1)[0] == CFA_SIGNAL  # type: ignore[index]
        # a sample inside its closing rt_sigreturn reports the state after the syscall: one byte past the FDE
        assert table.lookup(e.end)[0] == CFA_SIGNAL  # type: ignore[index]
    ends = [loc for e in entries.values() for loc, row in e.rows if e.kind == "FDE" and row.get("ra") == "u"]
    assert ends, "clone/clone3/start leave the return address undefined"
    assert all(table.lookup(loc)[0] == CFA_END for loc in ends)  # type: ignore[index]
    plt = [e for e in entries.values() if e.plt is not None]
    assert plt and all(table.lookup(e.end - 1)[0] == CFA_PLT for e in plt)  # type: ignore[index]


def test_rows_are_sorted_merged_and_packed() -> None:
    table = build_table(str(LIBC))
    arr = table.array()
    assert len(table.rows) == table.count * ROW_SIZE == arr.nbytes
    assert (arr["pc"][1:] > arr["pc"][:-1]).all()
    rules = arr[["cfa_type", "cfa_offset", "rbp_type", "rbp_offset"]]
    assert (rules[1:] != rules[:-1]).all(), "consecutive rows with one rule are merged"
    assert (arr["reserved"] == 0).all()
    pc, cfa_off, rbp_off, cfa_type, rbp_type, _reserved = ROW.unpack_from(table.rows, 12 * 5)
    assert (pc, cfa_type, cfa_off, rbp_type, rbp_off) == (int(arr["pc"][5]), int(arr["cfa_type"][5]),
                                                         int(arr["cfa_offset"][5]), int(arr["rbp_type"][5]),
                                                         int(arr["rbp_offset"][5]))


# -- malformed input -------------------------------------------------------------------------------

def _patched(src: Path, dst: Path, section: str, patch: bytes, at: int) -> Path:
    data = bytearray(src.read_bytes())
    with open(src, "rb") as f:
        sec = ElfFile(f).section(section)
    assert sec is not None
    data[sec.offset + at:sec.offset + at + len(patch)] = patch
    dst.write_bytes(bytes(data))
    return dst


def _first_fde(path: Path) -> int:
    entries = readelf_frames(path)
    return min(e.offset for e in entries.values() if e.kind == "FDE" and e.section == ".eh_frame")


def test_malformed_eh_frame_is_a_format_error(shapes: dict[str, Path], tmp_path: Path) -> None:
    exe = shapes["o2"]
    fde = _first_fde(exe)
    with open(exe, "rb") as f:
        size = ElfFile(f).section(".eh_frame").size  # type: ignore[union-attr]
    cases = {
        "length past the section": (struct.pack("<I", size * 4), fde),
        "64-bit length past the section": (struct.pack("<IQ", 0xFFFFFFFF, 1 << 40), 0),
        "FDE whose CIE pointer names itself": (struct.pack("<I", 0), fde + 4),
        "CIE pointer before the section": (struct.pack("<I", 0x7FFFFFF0), fde + 4),
        "bad CIE version": (b"\x09", 8),
    }
    for name, (patch, at) in cases.items():
        bad = _patched(exe, tmp_path / "bad", ".eh_frame", patch, at)
        with pytest.raises(BinaryFormatError):
            build_table(str(bad))
        assert name
    # .eh_frame_hdr naming a CIE instead of an FDE (an entry's fde pointer moved onto offset 0)
    with open(exe, "rb") as f:
        elf = ElfFile(f)
        hdr, eh = elf.section(".eh_frame_hdr"), elf.section(".eh_frame")
    assert hdr is not None and eh is not None
    bad = _patched(exe, tmp_path / "badhdr", ".eh_frame_hdr", struct.pack("<i", eh.addr - hdr.addr), 12 + 4)
    with pytest.raises(BinaryFormatError, match="does not name that FDE"):
        build_table(str(bad))
    # a file cut short of its sections
    cut = tmp_path / "cut"
    cut.write_bytes(exe.read_bytes()[: os.path.getsize(exe) // 3])
    with pytest.raises(BinaryFormatError):
        build_table(str(cut))


def test_malformed_programs() -> None:
    cfi = CfiSection(bytes(64), 0, eh=True)
    with pytest.raises(CfiFormatError, match="no FDE"):
        cfi.fde(0)  # a zero length: the terminator
    cie = _tiny_cie()
    start = cie.initial_state
    for code, why in [(b"\x0a" * 100, "nests too deep"), (b"\x0b", "without remember_state"),
                      (b"\x0e" + b"\xff" * 20, "LEB128"), (b"\x0f\x40", "past its FDE"), (b"\x02", "past its FDE"),
                      (b"\x3f", "unknown CFA instruction")]:
        with pytest.raises(CfiFormatError, match=why):
            run_program(code, cie, start)


def _tiny_cie() -> Cie:
    # length, id 0, version 1, "zR", caf 1, daf -8, ra 16, aug len 1, R=pcrel|sdata4, def_cfa rsp+8, offset ra c-8
    body = struct.pack("<IB", 0, 1) + b"zR\0" + bytes([1, 0x78, 16, 1, 0x1B, 0x0C, 7, 8, 0x90, 1])
    body += b"\0" * (-len(body) % 4)
    data = struct.pack("<I", len(body)) + body + b"\0" * 4
    return CfiSection(data, 0x1000, eh=True).cie(0)


def test_random_corruption_never_escapes_the_format_error(shapes: dict[str, Path], tmp_path: Path) -> None:
    exe = shapes["o2"]
    with open(exe, "rb") as f:
        elf = ElfFile(f)
        secs = [elf.section(".eh_frame"), elf.section(".eh_frame_hdr")]
    rng = random.Random(13)
    original = exe.read_bytes()
    outcomes = {"built": 0, "rejected": 0}
    for _ in range(150):
        data = bytearray(original)
        sec = rng.choice(secs)
        assert sec is not None
        for _ in range(rng.randint(1, 4)):
            data[sec.offset + rng.randrange(sec.size)] = rng.randrange(256)
        bad = tmp_path / "fuzz"
        bad.write_bytes(bytes(data))
        try:
            build_table(str(bad))
            outcomes["built"] += 1
        except BinaryFormatError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 10, outcomes


# -- the cache -------------------------------------------------------------------------------------

def test_cache_hit_and_corrupt_entry_rebuilt(tmp_path: Path) -> None:
    cache = TableCache(str(tmp_path))
    first = cache.get(str(LIBC))
    assert cache.stats["built"] == 1
    again = TableCache(str(tmp_path)).get(str(LIBC))
    assert again.rows == first.rows and again.source == first.source and again.build_id == first.build_id
    (entry,) = list((tmp_path / "unwind").rglob("*.tbl"))
    assert entry.stem == first.build_id
    raw = bytearray(entry.read_bytes())
    raw[-5] ^= 0xFF
    entry.write_bytes(bytes(raw))
    third = TableCache(str(tmp_path))
    assert third.get(str(LIBC)).rows == first.rows
    assert third.stats["corrupt"] == 1 and third.stats["built"] == 1
    entry.write_bytes(entry.read_bytes()[:100])  # torn
    fourth = TableCache(str(tmp_path))
    assert fourth.get(str(LIBC)).rows == first.rows and fourth.stats["corrupt"] == 1
    assert fourth.get(str(LIBC)).rows == first.rows and fourth.stats["hits"] == 1


def test_cache_keys_binaries_without_build_id_by_their_cfi(shapes: dict[str, Path], tmp_path: Path) -> None:
    """A library without a build id copied into many places (protobuf's upb module and numpy's OpenBLAS are
    in every virtualenv here) is built once: the key is a hash of what the build reads, not the file's inode.
    A binary whose CFI differs gets its own entry; one without section headers is keyed by identity."""
    first, copy = tmp_path / "a" / "nobid", tmp_path / "b" / "nobid"
    for path in (first, copy):
        path.parent.mkdir()
        shutil.copy(shapes["nobuildid"], path)
    root = str(tmp_path / "c")
    cache = TableCache(root)
    table = cache.get(str(first))
    assert table.build_id is None and table.count > 0 and cache.stats["built"] == 1
    key = cache.key(str(first))[0]
    assert key.startswith("cfi-") and cache.key(str(copy))[0] == key
    other = TableCache(root)  # a restart meeting the other copy (another inode)
    assert other.get(str(copy)).rows == table.rows and other.stats == {**other.stats, "hits": 1, "built": 0}
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same bytes, new identity: the same table
    assert other.get(str(copy)).rows == table.rows and other.stats["built"] == 0
    # another program without a build id: another key, built
    changed = tmp_path / "o1"
    subprocess.run(["gcc", "-O1", "-Wl,--build-id=none", "-o", str(changed), str(WORKLOADS / "unwind_shapes.c")],
                   check=True)
    assert cache.key(str(changed))[0] not in (key, None)
    assert cache.get(str(changed)).rows != table.rows and cache.stats["built"] == 2
    # no section headers: the CFI is found through PT_GNU_EH_FRAME, the file's identity keys it
    raw = bytearray(first.read_bytes())
    struct.pack_into("<Q", raw, 0x28, 0)  # e_shoff
    struct.pack_into("<HHH", raw, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    bare = tmp_path / "bare"
    bare.write_bytes(bytes(raw))
    st = os.stat(bare)
    assert cache.key(str(bare))[0] == f"id-{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"
    assert cache.get(str(bare)).rows == table.rows and cache.stats["built"] == 3


def test_cache_keeps_tables_read_through_indirect_pointers_by_file(shapes: dict[str, Path], tmp_path: Path) -> None:
    """Rows that rest on a pointer read outside the CFI (DW_EH_PE_indirect) are not named by the CFI's
    digest: such a table is stored under the file's identity, so a copy elsewhere is built again."""

    def indirect(path: str) -> UnwindTable:
        table = build_table(path)
        table.stats["indirect"] = 1
        return table

    first, copy = tmp_path / "first", tmp_path / "copy"
    for path in (first, copy):
        shutil.copy(shapes["nobuildid"], path)
    cache = TableCache(str(tmp_path / "c"), builder=indirect)
    table = cache.get(str(first))
    st = os.stat(first)
    (entry,) = list((tmp_path / "c").rglob("*.tbl"))
    assert entry.stem == f"id-{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"
    again = TableCache(str(tmp_path / "c"), builder=indirect)
    assert again.get(str(first)).rows == table.rows and again.stats["hits"] == 1 and again.stats["built"] == 0
    again.get(str(copy))
    assert again.stats["built"] == 1


# -- encodings no toolchain here writes: a hand-made .debug_frame -------------------------------

def _uleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def test_dwarf64_version4_debug_frame_and_rare_instructions() -> None:
    """DWARF64 lengths, a version 4 CIE (address and segment sizes), set_loc, advance_loc2/4,
    remember/restore_state, *_sf forms, val_offset, register, args_size, window_save, expressions."""
    # CIE: 64-bit length, id all ones, version 4, "", address size 8, segment 0, caf 1, daf -8, ra 16
    cie_body = struct.pack("<QB", 0xFFFFFFFFFFFFFFFF, 4) + b"\0" + bytes([8, 0, 1, 0x78, 16])
    cie_body += bytes([0x0C, 7, 8, 0x90, 1])  # def_cfa rsp+8; offset ra c-8
    cie = struct.pack("<IQ", 0xFFFFFFFF, len(cie_body)) + cie_body
    begin = 0x401000
    prog = bytes([0x0E, 16, 0x86, 2])  # def_cfa_offset 16; offset rbp c-16
    prog += bytes([0x03]) + struct.pack("<H", 0x100)  # advance_loc2 -> +0x100
    prog += bytes([0x0A, 0x12, 6]) + bytes([0x7E])  # remember_state; def_cfa_sf rbp, -2*-8 = 16
    prog += bytes([0x2E, 8, 0x2D])  # GNU_args_size 8; GNU_window_save
    prog += bytes([0x04]) + struct.pack("<I", 0x10)  # advance_loc4 -> +0x110
    prog += bytes([0x0B])  # restore_state: back to rsp+16, rbp c-16
    prog += bytes([0x01]) + struct.pack("<Q", begin + 0x120)  # set_loc -> +0x120
    prog += bytes([0x14, 6, 3])  # val_offset rbp v-24
    prog += bytes([0x41, 0x09, 6, 3])  # advance 1; register rbp in rbx
    prog += bytes([0x41, 0x10, 6, 2, 0x76, 0])  # advance 1; expression rbp (breg6 0)
    prog += bytes([0x41, 0x08, 6, 0x07, 16])  # advance 1; same_value rbp; undefined ra
    fde_body = struct.pack("<QQQ", 0, begin, 0x200) + prog
    fde = struct.pack("<IQ", 0xFFFFFFFF, len(fde_body)) + fde_body
    cfi = CfiSection(cie + fde, 0, eh=False)
    (entry,) = list(cfi.entries())
    got = cfi.rows(cfi.fde(entry[0]))
    rows = {pc - begin: _ours(state) for pc, state in got}
    assert rows == {
        0x000: ("rsp+16", "c-16", "c-8"),
        0x100: ("rbp+16", "c-16", "c-8"),
        0x110: ("rsp+16", "c-16", "c-8"),
        0x120: ("rsp+16", "v-24", "c-8"),
        0x121: ("rsp+16", "rbx", "c-8"),
        0x122: ("rsp+16", "exp", "c-8"),
        0x123: ("rsp+16", "same", "u"),
    }
    from profiler.unwind.build import compact_rule

    compact = [compact_rule(state, False) for _, state in got]
    assert compact == [(CFA_RSP, 16, RBP_OFFSET, -16), (CFA_RBP, 16, RBP_OFFSET, -16), (CFA_RSP, 16, RBP_OFFSET, -16),
                       (CFA_RSP, 16, RBP_UNDEFINED, 0), (CFA_RSP, 16, RBP_UNDEFINED, 0),
                       (CFA_RSP, 16, RBP_AT_RBP, 0), (CFA_END, 0, RBP_SAME, 0)]  # breg6 0: gcc's DRAP


def test_pointer_encodings() -> None:
    from profiler.unwind.cfi import PointerReader

    data = struct.pack("<iIQ", -16, 0x1234, 0x9000) + _uleb(300) + b"\x7f"
    derefs: list[int] = []

    def deref(addr: int) -> int:
        derefs.append(addr)
        return 0xABC

    r = PointerReader(data, 0x5000, datarel_base=0x8000, deref=deref)
    n = len(data)
    assert r.read(0x1B, 0, n) == (0x5000 - 16, 4)  # pcrel|sdata4
    assert r.read(0x03, 4, n) == (0x1234, 8)  # udata4
    assert r.read(0x3B, 0, n) == (0x8000 - 16, 4)  # datarel|sdata4
    assert r.read(0x00, 8, n) == (0x9000, 16)  # absptr
    assert r.read(0x01, 16, n) == (300, 18)  # uleb128
    assert r.read(0x09, 18, n) == (-1 & (2**64 - 1), 19)  # sleb128, as an address
    assert r.read(0x9B, 0, n) == (0xABC, 4) and derefs == [0x5000 - 16]  # indirect|pcrel|sdata4
    assert r.read(0xFF, 7, n) == (0, 7)  # omit
    for enc, why in [(0x0B, "past its entry"), (0x07, "unknown pointer encoding"), (0x2B, "unsupported")]:
        with pytest.raises(CfiFormatError, match=why):
            r.read(enc, n - 2 if enc == 0x0B else 0, n)
    with pytest.raises(CfiFormatError, match="datarel"):
        PointerReader(data, 0).read(0x3B, 0, n)


def test_cache_is_bounded_and_works_without_a_root(shapes: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = TableCache(str(tmp_path), max_bytes=1)  # every store trims the others away
    for which in ("o2", "o2fp"):
        cache.get(str(shapes[which]))
        cache.trim()
    assert len(list((tmp_path / "unwind").rglob("*.tbl"))) == 1 and cache.stats["evicted"] >= 1
    monkeypatch.delenv("PODFLAME_SYMBOL_CACHE", raising=False)
    plain = TableCache()
    assert plain.root is None and plain.get(str(shapes["o2"])).count > 0 and plain.stats["built"] == 1
    monkeypatch.setenv("PODFLAME_SYMBOL_CACHE", str(tmp_path / "env"))
    assert TableCache().root == str(tmp_path / "env" / "unwind" / f"v{FORMAT}")


def _vdso_image() -> bytes:
    with open("/proc/self/maps") as f:
        line = next(ln for ln in f if ln.rstrip().endswith("[vdso]"))
    start, end = (int(x, 16) for x in line.split()[0].split("-"))
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(start)
        return mem.read(end - start)


def test_vdso_image_from_memory(tmp_path: Path) -> None:
    """The vDSO has no file: its table is built from the image read out of a process's memory,
    and agrees with the same bytes written to a file and read by readelf."""
    image = _vdso_image()
    table = build_table(image)
    assert table.identity is None and table.count > 0 and table.source == ".eh_frame_hdr"
    (tmp_path / "vdso.so").write_bytes(image)
    got, from_file = compare_with_readelf(tmp_path / "vdso.so")
    assert got.mismatches == [] and got.rule_rows > 0 and from_file.rows == table.rows


# -- compaction without numpy: the agent builds small tables itself (profiler/unwind/builder.py) ----

@pytest.mark.parametrize("which", ["o2", "o2fp", "debugframe", "debugframe-only", "cxx", "vdso", "libc", "libstdc++",
                                   "debian-python3"])
def test_python_compaction_gives_numpys_rows(shapes: dict[str, Path], tmp_path: Path, which: str) -> None:
    """The agent compacts small tables in plain Python, the child big ones with numpy: the kernel gets the
    same bytes either way (readelf checks the rows above, through whichever compaction a size picks)."""
    path = {"libc": LIBC, "libstdc++": LIBSTDCXX, "debian-python3": DEBIAN_PYTHON}.get(which)
    if which == "vdso":
        path = tmp_path / "vdso.so"
        path.write_bytes(_vdso_image())
    path = path or shapes[which]
    with_numpy, plain = build_table(str(path), python=False), build_table(str(path), python=True)
    assert plain.count == with_numpy.count > 0
    assert plain.rows == with_numpy.rows and plain.stats == with_numpy.stats and plain.source == with_numpy.source


def test_python_compaction_on_random_overlapping_fdes() -> None:
    """Both compactions on FDEs that real binaries rarely have: overlapping and equal starts (two sources,
    either wins a tie by priority), rows past their FDE's end, gaps, FDEs that start where another ends."""
    from profiler.unwind.build import _Rows

    rng = random.Random(13)
    for _ in range(300):
        rows = _Rows()
        rows.rules += [(rng.choice((CFA_RSP, CFA_RBP, CFA_UNSUPPORTED, CFA_END)), rng.randrange(-64, 64, 8),
                        rng.choice((RBP_SAME, RBP_OFFSET)), rng.randrange(-32, 0, 8)) for _ in range(4)]
        for _ in range(rng.randrange(0, 12)):
            begin = rng.randrange(0x1000, 0x1040)
            length = rng.randrange(1, 24)
            deltas = sorted({0, *(rng.randrange(0, length + 6) for _ in range(rng.randrange(0, 5)))})
            rows.begins.append(begin)
            rows.ends.append(begin + length)
            rows.prios.append(rng.randrange(2))
            rows.counts.append(len(deltas))
            rows.deltas.extend(deltas)
            rows.rids.extend(rng.randrange(len(rows.rules)) for _ in deltas)
        assert rows.compact(python=True) == rows.compact(python=False)


def test_small_tables_only(shapes: dict[str, Path], tmp_path: Path) -> None:
    """build_small_table builds (without numpy) only under its CFI limit, having read the ELF headers alone
    otherwise; a file without section headers (its CFI's size unknown before it is read) is not small."""
    from profiler.unwind.build import build_small_table, cfi_size

    exe = shapes["o2"]
    with open(exe, "rb") as f:
        size = cfi_size(ElfFile(f))
    assert size is not None and 0 < size < 64 << 10
    small = build_small_table(str(exe), size)
    assert small is not None and small.rows == build_table(str(exe)).rows
    assert build_small_table(str(exe), size - 1) is None
    assert build_small_table(str(LIBC), 64 << 10) is None
    headless = tmp_path / "no-section-headers"
    raw = bytearray(exe.read_bytes())
    struct.pack_into("<Q", raw, 0x28, 0)  # e_shoff
    struct.pack_into("<HHH", raw, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    headless.write_bytes(bytes(raw))
    assert build_table(str(headless)).rows == small.rows  # found through PT_GNU_EH_FRAME
    assert build_small_table(str(headless), 1 << 30) is None
