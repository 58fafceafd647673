"""The kallsyms parser against a plain reference parser, and when a lookup miss reloads the table."""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from pathlib import Path

import pytest

from symbolizer import kallsyms
from symbolizer.kallsyms import MAX_SYMBOL_SIZE, Kallsyms, parse_kallsyms

U64_MAX = (1 << 64) - 1


class Reference:
    """The spec, line by line: `address type name [module]`, text and weak only, first alias wins."""

    def __init__(self, text: bytes) -> None:
        syms: dict[int, str] = {}
        for line in text.split(b"\n"):
            f = line.split()
            if len(f) == 4 and re.fullmatch(rb"\[\S+\]", f[3]):
                name = f[2] + b" " + f[3]
            elif len(f) == 3:
                name = f[2]
            else:
                continue
            if f[1] not in (b"t", b"T", b"w", b"W") or not re.fullmatch(rb"[0-9a-fA-F]+", f[0]):
                continue
            address = int(f[0], 16)
            if 0 < address <= U64_MAX and address not in syms:
                syms[address] = name.decode("utf-8", "replace")
        self.syms, self.starts = syms, sorted(syms)

    def end(self, i: int) -> int:
        nxt = self.starts[i + 1] if i + 1 < len(self.starts) else U64_MAX
        return min(nxt, self.starts[i] + MAX_SYMBOL_SIZE, U64_MAX)

    def lookup(self, address: int) -> str | None:
        i = bisect_right(self.starts, address) - 1
        if i < 0 or address >= self.end(i):
            return None
        return self.syms[self.starts[i]]

    def probes(self) -> list[int]:
        out = [0, 1, U64_MAX, U64_MAX - 1]
        for i, s in enumerate(self.starts):
            e = self.end(i)
            out += [s - 1, s, s + 1, e - 1, e, e + 1]
        return out


def check(text: bytes | str) -> Reference:
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    ref, got = Reference(raw), parse_kallsyms(text)
    assert len(got) == len(ref.starts)
    for a in ref.probes():
        assert got.lookup(a) == ref.lookup(a), (hex(a), got.lookup(a), ref.lookup(a))
    return ref


def real_kallsyms() -> bytes:
    data = Path("/proc/kallsyms").read_bytes()
    if not Reference(data).starts:
        pytest.skip("kallsyms addresses are hidden (kptr_restrict)")
    return data


def test_real_kallsyms_every_symbol_as_the_reference() -> None:
    data = real_kallsyms()
    assert kallsyms._fast_columns(data, True) is not None  # the fast path is what is tested here
    ref = check(data)
    assert len(ref.starts) > 1000


def test_real_kallsyms_with_unsorted_module_lines_and_reuse_of_the_core_columns() -> None:
    data = real_kallsyms()
    rng = random.Random(3)
    top = max(int(line[:16], 16) for line in data.splitlines())
    lines = []
    for m in range(20):  # modules above and below the kernel, symbols in no order, aliases, data
        base = (top + (m + 1) * (1 << 21)) if m % 2 else (0xFFFFFFFF00000000 + m * (1 << 21))
        offsets = [*rng.sample(range(0, 1 << 20, 16), 200), 0, 0]
        for j, off in enumerate(offsets):
            lines.append(b"%016x %c mod%d_f%d\t[mod%d]\n" % (base + off, b"tTdwWb"[j % 6], m, j, m))
    rng.shuffle(lines)
    bigger = data + b"".join(lines)
    ref = check(bigger)
    first = parse_kallsyms(data)
    again = parse_kallsyms(bigger, first)
    assert again.head is not None and first.head is not None and again.head[1] is first.head[1]  # reused
    for a in ref.probes()[::7]:
        assert again.lookup(a) == ref.lookup(a)


SYNTHETIC = {
    "aliases, data symbols, weak, modules, bpf": (
        "0000000000000000 A fixed_percpu_data\n"
        "ffffffff81000000 T _stext\n"
        "ffffffff81000000 T startup_64\n"
        "ffffffff81001000 t do_one_initcall\n"
        "ffffffff81002000 D some_data\n"
        "ffffffff81003000 W weak_fn\n"
        "ffffffff81003000 w weak_alias\n"
        "ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]\n"
        "ffffffffc0300000 t bpf_prog_6deef7357e7b4530_sd_fw_ingress\t[bpf]\n"
    ),
    "unsorted module lines, an alias of a core symbol": (
        "ffffffff81000000 T a\nffffffff81000100 T b\n"
        "ffffffffc0002000 t m2\t[m]\nffffffffc0001000 t m1\t[m]\nffffffff81000100 t b_mod\t[m]\n"
        "ffffffffa0000000 t below\t[n]\nffffffffc0001000 t m1_alias\t[m]\n"
    ),
    "unsorted core lines": "ffffffff81000200 T c\nffffffff81000000 T a\nffffffff81000100 T b\n",
    "hidden: every address zero": "0000000000000000 T a\n0000000000000000 t b\t[m]\n",
    "some zero addresses": "0000000000000000 T z\nffffffff81000000 T a\n",
    "non-text only": "ffffffff81000000 D d\nffffffff81000100 b bss\tr\n",
    "no trailing newline": "ffffffff81000000 T a\nffffffff81000100 T last",
    "empty": "",
    "only newlines": "\n\n\n",
    "symbols far apart: the cap": "ffffffff81000000 T a\nffffffff82000000 T b\nffffffffffffff00 T top\n",
    "garbage lines": (
        "ffffffff81000000 T a\n"
        "garbage line\n"
        "ffffffff81000100 T\n"  # no name
        "ffffffff81000200 T x y z\n"  # too many fields
        "ffffffff81000300 T two words\n"
        "ffffffff8100040 T short_address\n"
        "fffffffff81000500 T long_address\n"
        "ffffffff81000600 TT long_type\n"
        "0xffffffff81000700 T prefixed\n"
        "ffff_fff81000800 T underscore\n"
        "gfffffff81000900 T not_hex\n"
        "ffffffff81000a00  T two_spaces\n"
        "ffffffff81000b00 T trailing_space \n"
        "ffffffff81000c00 T crlf\r\n"
        "\tffffffff81000d00 T leading_tab\n"
        "ffffffff81000e00\tT tabbed\n"
        "ffffffff81000f00 t mod_no_bracket\tm\n"
        "ffffffff81001000 t mod_open\t[m\n"
        "ffffffff81001100 t mod_empty\t[]\n"
        "ffffffff81001200 t mod_spaced [m]\n"
        "ffffffff81001300 t mod_two\t[a]\t[b]\n"
        "ffffffff81001400 t \t[m]\n"
        "ffffffff81001500 t mod_inner\t[a [b]\n"
        "ffffffff81001600 t mod_ok\t[]]\n"
        "FFFFFFFF81001700 T upper\n"
        "10000000000000000 T too_big\n"
        "ffffffff81001800 T mark\x01inside\n"
        "ffffffff81001900 T \xff\xfe_not_utf8\n"
        "ffffffff81001a00 T last\n"
    ),
    "misaligned lines that still split into threes": (
        "ffffffff81000000 T\nbeefbeefbeefbeef ffffffff81000100 T b\nffffffff81000200 T c\n"
    ),
    "32-bit addresses": "c1000000 T a\nc1000100 T b\n",
    "address widths that add up to 16 each": "ffffffff8100000 T a\nfffffffff81000100 T b\n",
    "a module symbol between two core ones, then an alias of the second": (
        "ffffffff81000100 T a\nffffffff81000200 T b\n"
        "ffffffff81000150 t m\t[m]\nffffffff81000200 t b_alias\t[m]\n"
    ),
}


@pytest.mark.parametrize("text", SYNTHETIC.values(), ids=SYNTHETIC.keys())
def test_synthetic_texts_as_the_reference(text: str) -> None:
    check(text)
    check(text.encode("utf-8", "surrogateescape"))


def test_hidden_and_module_names() -> None:
    assert parse_kallsyms(SYNTHETIC["hidden: every address zero"]).hidden
    assert not parse_kallsyms(SYNTHETIC["some zero addresses"]).hidden
    r = parse_kallsyms(SYNTHETIC["aliases, data symbols, weak, modules, bpf"])
    assert r.lookup(0xFFFFFFFF81000010) == "_stext" and r.lookup(0xFFFFFFFF81003010) == "weak_fn"
    assert r.lookup(0xFFFFFFFFC0201010) == "ftrace_trampoline [__builtin__ftrace]"
    assert r.lookup_start(0xFFFFFFFF81001010) == ("do_one_initcall", 0xFFFFFFFF81001000)


def test_random_edits_of_a_kallsyms_text_as_the_reference() -> None:
    rng = random.Random(11)
    lines = [
        f"{0xFFFFFFFF81000000 + 0x40 * i:016x} {rng.choice('tTwWdDbr')} f{i}" + ("\t[m]" if i % 5 == 0 else "")
        for i in range(60)
    ]
    pieces = [" ", "\t", "\n", "[", "]", "x", "0", "\t[m]", "  ", "T ", "\x01", "\r"]
    for _ in range(400):
        edited = list(lines)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(edited))
            s = edited[i]
            at = rng.randrange(len(s) + 1)
            if rng.random() < 0.5:
                edited[i] = s[:at] + rng.choice(pieces) + s[at:]
            else:
                edited[i] = s[:at] + s[at + rng.randrange(1, 4):]
        if rng.random() < 0.2:
            rng.shuffle(edited)
        check("\n".join(edited) + rng.choice(["", "\n"]))


def test_a_miss_reloads_after_the_interval_and_finds_a_new_module(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    base = "ffffffff81000000 T _stext\nffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]\n"
    path.write_text(base)
    now = [0.0]
    k = Kallsyms(str(path), min_reload_interval=30, unlisted_interval=300, clock=lambda: now[0])
    new_mod = 0xFFFFFFFFC0400000
    assert k.lookup(new_mod) is None and k.reloads == 1
    path.write_text(base + "ffffffffc0400000 t fn\t[new]\n")
    now[0] = 31
    assert k.lookup(new_mod + 8) == "fn [new]" and k.reloads == 2


def test_code_kallsyms_does_not_list_stops_reloading_until_the_long_interval(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text("ffffffff81000000 T _stext\n")
    now = [0.0]
    k = Kallsyms(str(path), min_reload_interval=30, unlisted_interval=300, clock=lambda: now[0])
    unlisted = 0xFFFFFFFFC0500010  # a BPF program with bpf_jit_kallsyms off, say
    assert k.lookup(unlisted) is None and k.reloads == 1
    for t, reloads in [(31, 2), (62, 3), (93, 3), (200, 3)]:  # two reloads did not help: stop
        now[0] = t
        assert k.lookup(unlisted + 0x100) is None and k.reloads == reloads, t
    now[0] = 210
    assert k.lookup(0xFFFFFFFFC0700000) is None and k.reloads == 4  # another page: still reloads
    path.write_text("ffffffff81000000 T _stext\nffffffffc0500000 t now_listed\t[bpf]\n")
    now[0] = 210 + 299
    assert k.lookup(unlisted) is None and k.reloads == 4
    now[0] = 210 + 300  # the table is as old as the long interval: reload
    assert k.lookup(unlisted) == "now_listed [bpf]" and k.reloads == 5


def test_a_hidden_table_reloads_only_after_the_long_interval(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text("0000000000000000 T _stext\n")
    now = [0.0]
    k = Kallsyms(str(path), min_reload_interval=30, unlisted_interval=300, clock=lambda: now[0])
    assert not k.available and k.reloads == 1
    now[0] = 100
    assert k.lookup(0xFFFFFFFF81000000) is None and k.reloads == 1
    now[0] = 300
    path.write_text("ffffffff81000000 T _stext\n")
    assert k.lookup(0xFFFFFFFF81000000) == "_stext" and k.reloads == 2 and k.available and len(k) == 1


def test_an_unreadable_file_is_an_empty_table(tmp_path: Path) -> None:
    k = Kallsyms(str(tmp_path / "missing"))
    assert not k.available and k.lookup(0xFFFFFFFF81000000) is None and len(k) == 0
