"""Kernel addresses -> names through /proc/kallsyms, parsed into a sorted array of starts.

kallsyms has no sizes: a symbol reaches the next one, capped so an address far past the last
function of a region (module area, BPF programs) is not blamed on it. Modules and BPF programs
come and go, so a miss reloads the table, at most once per `min_reload_interval`; a miss that a
reload already failed to fix twice (code kallsyms does not list: BPF programs with
bpf_jit_kallsyms off or bpf_jit_harden on, garbage addresses) or a hidden table (kptr_restrict)
reloads at most once per `unlisted_interval`. The kernel alone spends ~0.035 s of CPU generating
the text (122k lines); parsing adds ~0.04 s from scratch, ~0.003 s when the core kernel's lines
are unchanged (they are reused), so a reload still must stay rare on a node with a 1% budget.
"""

from __future__ import annotations

import re
import sys
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from itertools import compress, count, islice
from operator import eq, gt

MAX_SYMBOL_SIZE = 256 * 1024  # larger than any kernel function; bounds the last symbol of a region
PAGE = 12  # a page's code is listed or not as a whole (a module's text, a BPF program pack)
_U64_MAX = (1 << 64) - 1

# The fast path splits the whole text once (bytes.split is C; a regex or a loop per line was
# most of the 0.13 s parse) and checks that the split lined up, else falls back to one line at a
# time. A module line's "\t[" becomes _MARK first, so every good line is three tokens.
_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on
_NOT_WHITESPACE = bytes(c for c in range(256) if c not in _WHITESPACE)
_TEXT = bytes(c in b"tTwW" for c in range(256))  # text and weak symbols only
_HEX = b"0123456789abcdefABCDEF"
_MARK = b"\x01"
_BAD_MODULE = re.compile(rb"\t\[(?:[^\n]*[^\]\n])?\n|\t\[\]\n|\t\[[^\n]*\t")  # "[m]" ends a line, once
_LITTLE = sys.byteorder == "little"


_Columns = tuple[array, list[bytes]]


def _fast_columns(data: bytes, marked: bool) -> _Columns | None:
    """Addresses and names of the text lines when every line is `16-hex-digits type name`.

    `marked`: _MARK is in no line, so it may stand for a module's tab.
    """
    if b"\t" in data:
        if not marked or b" \t[" in data or _BAD_MODULE.search(data):
            return None
        data = data.replace(b"\t[", _MARK + b"[")
    tokens = data.split()
    n = len(tokens) // 3
    # Exactly the whitespace "  \n" per line and 3n tokens: with data ending in "\n", each line
    # holds three tokens separated by single spaces (the split lined up).
    if len(tokens) != 3 * n or data.translate(None, _NOT_WHITESPACE) != b"  \n" * n:
        return None
    types = b"".join(tokens[1::3])
    hexes = tokens[0::3]
    if len(types) != n or (n and min(map(len, hexes)) != 16):
        return None
    digits = b"".join(hexes)
    if len(digits) != 16 * n:
        return None
    try:
        starts = array("Q", bytes.fromhex(digits.decode("ascii")))
    except ValueError:
        return None
    if _LITTLE:
        starts.byteswap()
    names = tokens[2::3]
    del tokens, hexes
    text = types.translate(_TEXT)
    dropped = text.count(0)
    if dropped * 16 > n:  # many data symbols (CONFIG_KALLSYMS_ALL)
        return array("Q", compress(starts, text)), list(compress(names, text))
    if dropped:  # a few: copy the runs between them
        kept_starts, kept_names, i = array("Q"), [], 0
        while (j := text.find(0, i)) >= 0:
            kept_starts += starts[i:j]
            kept_names += names[i:j]
            i = j + 1
        kept_starts += starts[i:]
        kept_names += names[i:]
        starts, names = kept_starts, kept_names
    return starts, names


def _slow_columns(data: bytes) -> _Columns:
    """Line by line, skipping lines that are not `address type name [module]`."""
    addresses, names = [], []
    for line in data.split(b"\n"):
        f = line.split()
        if len(f) == 4 and f[3][:1] == b"[" and f[3][-1:] == b"]" and len(f[3]) > 2:
            name = f[2] + b" " + f[3]
        elif len(f) == 3:
            name = f[2]
        else:
            continue
        if f[1] not in (b"t", b"T", b"w", b"W") or f[0].translate(None, _HEX):
            continue
        address = int(f[0], 16)
        if address <= _U64_MAX:
            addresses.append(address)
            names.append(name)
    return array("Q", addresses), names


class KernelSymbols:
    """Sorted symbol starts; a symbol ends at the next start or MAX_SYMBOL_SIZE past its own.

    Kallsyms ranges never nest, so there is no end column: the bisect already bounds an address
    by the next start. Aliases stay in `starts` (the first listed is found by a second bisect) and
    names stay bytes until looked up: both are per-symbol work at a reload, rare at lookup.
    """

    __slots__ = ("_decoded", "_len", "_marked", "_names", "head", "hidden", "starts")

    def __init__(self, starts: array, names: list[bytes], *, marked: bool = False, hidden: bool = False,
                 head: tuple[tuple[int, int], _Columns] | None = None) -> None:
        self.starts = starts
        self._names, self._marked, self.hidden = names, marked, hidden
        self.head = head  # (length, hash) of the core kernel lines and their columns, for the next reload
        self._decoded: dict[int, str] = {}
        self._len = -1

    def __len__(self) -> int:
        """Distinct starts."""
        if self._len < 0:
            s = self.starts
            self._len = len(s) - sum(map(eq, s, islice(s, 1, None)))
        return self._len

    def __bool__(self) -> bool:
        return bool(self.starts)

    def _index(self, address: int) -> int:
        starts = self.starts
        i = bisect_right(starts, address) - 1
        if i < 0 or address - starts[i] >= MAX_SYMBOL_SIZE or address >= _U64_MAX:
            return -1
        return bisect_left(starts, starts[i], 0, i)  # aliases: the first listed, as perf

    def _name(self, i: int) -> str:
        name = self._decoded.get(i)
        if name is None:
            raw = self._names[i]
            if self._marked:
                raw = raw.replace(_MARK, b" ")
            name = self._decoded[i] = raw.decode("utf-8", "replace")
        return name

    def lookup(self, address: int) -> str | None:
        i = self._index(address)
        return None if i < 0 else self._name(i)

    def lookup_start(self, address: int) -> tuple[str, int] | None:
        i = self._index(address)
        return None if i < 0 else (self._name(i), self.starts[i])


def parse_kallsyms(data: bytes | str, previous: KernelSymbols | None = None) -> KernelSymbols:
    """Text symbols (t, T, w, W) of a kallsyms dump; module symbols are named `name [module]`.

    The core kernel's lines (all before the first module line) do not change while the kernel
    runs: when they hash as in `previous`, its columns for them are reused, and only the module,
    BPF and ftrace lines after them are parsed.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    marked = _MARK not in data
    tab = data.find(b"\t")
    cut = data.rfind(b"\n", 0, tab) + 1 if tab >= 0 else len(data)
    key = (cut, hash(memoryview(data)[:cut]))
    if previous is not None and previous.head is not None and previous.head[0] == key:
        head = previous.head[1]
    else:
        head = _columns(data[:cut], marked)
    starts, names = _merge(head, _columns(data[cut:], marked)) if cut < len(data) else head
    zeros = bisect_right(starts, 0)  # zero: hidden by kptr_restrict
    if zeros:
        starts, names = starts[zeros:], names[zeros:]
    return KernelSymbols(starts, names, marked=marked, hidden=bool(zeros) and not starts, head=(key, head))


def _columns(data: bytes, marked: bool) -> _Columns:
    """Addresses and names of the text lines of `data`, stably sorted by address.

    Core kernel lines come sorted, then module and BPF lines in no order: only the lines from the
    first one out of order on are sorted (stably: the first listed alias stays first), then merged in.
    """
    starts, names = _fast_columns(data, marked) or _slow_columns(data)
    k = next(compress(count(1), map(gt, starts, islice(starts, 1, None))), 0)  # first out of order
    if not k:
        return starts, names
    order = sorted(range(k, len(starts)), key=starts.__getitem__)
    tail = array("Q", map(starts.__getitem__, order))
    return _merge((starts[:k], names[:k]), (tail, list(map(names.__getitem__, order))))


def _merge(first: _Columns, then: _Columns) -> _Columns:
    """Two sorted column pairs as one, `first` before `then` at equal addresses (listed first)."""
    (s, s_names), (t, t_names) = first, then
    out, out_names, i, j = array("Q"), [], 0, 0
    while j < len(t):  # one pass per run of `then` falling between two of `first`
        at = bisect_right(s, t[j], i)
        e = bisect_left(t, s[at], j) if at < len(s) else len(t)
        out += s[i:at]
        out += t[j:e]
        out_names += s_names[i:at]
        out_names += t_names[j:e]
        i, j = at, e
    out += s[i:]
    out_names += s_names[i:]
    return out, out_names


class Kallsyms:
    """Lazily loaded kernel symbol table; `available` is False when addresses are hidden."""

    MAX_UNLISTED_PAGES = 4096

    def __init__(self, path: str = "/proc/kallsyms", *, min_reload_interval: float = 60.0,
                 unlisted_interval: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.min_reload_interval = min_reload_interval
        self.unlisted_interval = unlisted_interval
        self._clock = clock
        self._table: KernelSymbols | None = None
        self._loaded_at = 0.0
        self._failed: dict[int, int] = {}  # page -> reloads in a row that did not resolve it
        self.reloads = 0

    def reload(self) -> KernelSymbols:
        try:
            # /proc/kallsyms is generated 4 KiB per read() whatever the buffer: no buffer to tune
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        self._table = table = parse_kallsyms(data, self._table)
        self._loaded_at = self._clock()
        self.reloads += 1
        return table

    def _loaded(self) -> KernelSymbols:
        return self._table if self._table is not None else self.reload()

    @property
    def available(self) -> bool:
        return bool(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def lookup(self, address: int) -> str | None:
        table = self._loaded()
        name = table.lookup(address)
        if name is not None:
            return name
        waited = self._clock() - self._loaded_at
        if waited < self.min_reload_interval:
            return None
        page = address >> PAGE
        # A page two reloads did not fix holds code kallsyms does not list (one is no proof: the
        # sample may predate an unload); a hidden table stays hidden. Retry those rarely: the
        # page of unloaded code may be reused by listed code.
        if (table.hidden or self._failed.get(page, 0) >= 2) and waited < self.unlisted_interval:
            return None
        name = self.reload().lookup(address)  # a module or BPF program loaded since the last read
        if name is not None:
            self._failed.pop(page, None)
        elif page in self._failed or len(self._failed) < self.MAX_UNLISTED_PAGES:
            self._failed[page] = self._failed.get(page, 0) + 1
        return name
