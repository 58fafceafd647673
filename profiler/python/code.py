"""Names, file and line table of CPython code objects, read from another process.

A code object's address is all the kernel records per Python frame. By the time the agent reads
it the object may have been freed and the address reused, so nothing is named without checks:
the object's type must be the interpreter's code type, and its identity (the cache key) includes a
fingerprint of the object's own fields (first line and the addresses of its name, qualified name,
file name and line table objects), so a different code object at the same address is read anew.
Reads batch the remote ranges of one step into one process_vm_readv: the code object, then the
headers of its four strings/bytes, then their data. Entries outlive their process (until evicted)
so a process that exited before the drain still gets the names already read.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter

from podflame.errors import BinaryFormatError, PodflameError
from profiler.python import remote
from profiler.python.detect import PythonProcess
from profiler.python.lines import LineStarts, shared_decode
from profiler.python.offsets import NO_FIELD, PyOffsets
from profiler.python.remote import MemoryReadError, ProcessGone

MAX_STRING = 4096  # longer names and paths are refused (a real qualname or path is far shorter)
MAX_LINETABLE = 1 << 20
BYTES_NAME = "bytes"  # _string_plan's encoding for 2.7's PyStringObject names
READ_AHEAD = (128, 128, 128, 512)  # data bytes read with the name, qualname, file name and line table headers


class CodeReadError(BinaryFormatError):
    """The address does not hold a code object that reads consistently (freed, reused, not code)."""


@dataclass(frozen=True)
class CodeInfo:
    """What a profile shows of one code object."""

    name: str
    qualname: str  # co_qualname (3.11+); co_name before, which is what those versions know
    filename: str  # 2.7: the bytes decoded as UTF-8 (backslash escapes where they are not)
    firstlineno: int
    linetable: bytes  # co_lnotab (2.7-3.9) or co_linetable (3.10+), as the interpreter stores it
    linetable_format: int  # offsets.LNOTAB / LNOTAB_27 / LINETABLE_310 / LOCATIONS
    fingerprint: tuple[int, ...]

    def line(self, instr_offset: int) -> int | None:
        """Source line at a byte offset into the instructions (offsets.instr_offset)."""
        return self.line_starts.line(instr_offset)

    @cached_property
    def line_starts(self) -> LineStarts:
        """The line table decoded, once per code object read (not once per instruction asked about), and
        once per distinct table across processes (lines.shared_decode: every new python3 runs the same
        stdlib code objects at other addresses)."""
        return shared_decode(self.linetable, self.linetable_format, self.firstlineno)


def line(code: CodeInfo, instr_offset: int) -> int | None:
    return code.line(instr_offset)


class CodeReader:
    """Reads and caches code objects of one process (`for_process` makes one from detection's answer).

    The objects' types must be the process's PyCode_Type, PyUnicode_Type and PyBytes_Type (addresses
    from detect.PythonProcess); a type address not given is checked by its tp_name, once per address.
    """

    def __init__(self, pid: int, offsets: PyOffsets, code_type: int | None = None, *, str_type: int | None = None,
                 bytes_type: int | None = None, capacity: int = 4096) -> None:
        self.pid = pid
        self.offsets = offsets
        self.code_type = code_type
        self._expected = {b"code": code_type, b"str": str_type, b"bytes": bytes_type}
        # 2.7's line table is a str (PyStringObject; bytes is its alias there)
        self._table_type = b"str" if offsets.names_are_bytes else b"bytes"
        self.capacity = capacity
        self._cache: OrderedDict[tuple[int, tuple[int, ...]], CodeInfo] = OrderedDict()
        self._latest: dict[int, tuple[int, ...]] = {}  # address -> fingerprint last read there
        self._types: dict[int, bytes] = {}  # type address -> its tp_name (for types not given)
        self._head, self._pick = _head_fields(offsets)
        self.reads = 0  # code objects read whole (cache misses)
        self.failures = 0
        # read and read_many may come from two threads (pyframes' early reads of a young process, and the
        # drain): the cache is changed under this lock
        self._lock = threading.Lock()

    @classmethod
    def for_process(cls, proc: PythonProcess, *, capacity: int = 4096) -> CodeReader:
        return cls(proc.pid, proc.offsets, proc.code_type, str_type=proc.str_type, bytes_type=proc.bytes_type,
                   capacity=capacity)

    def __len__(self) -> int:
        return len(self._cache)

    def read(self, code_addr: int) -> CodeInfo:
        """The code object at `code_addr`; raises CodeReadError, or ProcessGone when the process exited
        and this address was never read."""
        with self._lock:
            return self._read(code_addr)

    def _read(self, code_addr: int) -> CodeInfo:
        try:
            try:
                head = remote.read(self.pid, code_addr, self.offsets.code_size)
            except MemoryReadError as e:
                self.failures += 1
                raise CodeReadError(str(e)) from e
            return self._from_head(code_addr, head)
        except ProcessGone:
            if (info := self.cached(code_addr)) is None:
                raise
            return info

    def read_many(self, addrs: Iterable[int]) -> dict[int, CodeInfo | PodflameError]:
        """Each address's code object, or the error that says why not (CodeReadError, ProcessGone).

        The fixed parts of all the code objects come in one system call (a drain's worth of frames
        costs one call plus a few per code object not seen before); a process that exited answers
        from the cache.
        """
        with self._lock:
            return self._read_many(list(dict.fromkeys(addrs)))

    def _read_many(self, unique: list[int]) -> dict[int, CodeInfo | PodflameError]:
        out: dict[int, CodeInfo | PodflameError] = {}
        try:
            heads = remote.read_many(self.pid, [(a, self.offsets.code_size) for a in unique])
        except ProcessGone as e:
            return {a: self.cached(a) or e for a in unique}
        todo: list[tuple[int, bytes, tuple[int, ...]]] = []  # not in the cache: their fields read together
        for a, head in zip(unique, heads, strict=True):
            try:
                if head is None:
                    self.failures += 1
                    raise CodeReadError(f"pid {self.pid}: cannot read a code object at {a:#x}")
                fp = self._check_head(a, head)
                hit = self._cache.get((a, fp))
                if hit is not None:
                    self._cache.move_to_end((a, fp))
                    out[a] = hit
                else:
                    todo.append((a, head, fp))
            except ProcessGone as e:
                out[a] = self.cached(a) or e
            except CodeReadError as e:
                out[a] = e
        if todo:
            try:
                read = self._read_fields_many(todo)
            except ProcessGone as e:
                read = [e] * len(todo)
            for (a, _, fp), got in zip(todo, read, strict=True):
                if isinstance(got, ProcessGone):
                    out[a] = self.cached(a) or got
                elif isinstance(got, CodeInfo):
                    out[a] = self._store(a, fp, got)
                else:
                    self.failures += 1
                    out[a] = CodeReadError(f"pid {self.pid}: code object at {a:#x}: {got}")
        return {a: out[a] for a in unique}

    def _from_head(self, code_addr: int, head: bytes) -> CodeInfo:
        fp = self._check_head(code_addr, head)
        key = (code_addr, fp)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        (got,) = self._read_fields_many([(code_addr, head, fp)])
        if isinstance(got, ProcessGone):
            raise got
        if not isinstance(got, CodeInfo):
            self.failures += 1
            raise CodeReadError(f"pid {self.pid}: code object at {code_addr:#x}: {got}") from got
        return self._store(code_addr, fp, got)

    def _store(self, code_addr: int, fp: tuple[int, ...], info: CodeInfo) -> CodeInfo:
        self.reads += 1
        self._cache[(code_addr, fp)] = info
        self._latest[code_addr] = fp
        while len(self._cache) > self.capacity:
            (old_addr, old_fp), _ = self._cache.popitem(last=False)
            if self._latest.get(old_addr) == old_fp:
                del self._latest[old_addr]
        return info

    def cached(self, code_addr: int) -> CodeInfo | None:
        """The last code object read at this address, without touching the process (it may be gone)."""
        fp = self._latest.get(code_addr)
        return None if fp is None else self._cache.get((code_addr, fp))

    def _check_head(self, code_addr: int, head: bytes) -> tuple[int, ...]:
        # (type, first line, name, [qualname,] file name, line table) in one unpack (each drain re-validates
        # every code object its samples name: hundreds of heads a drain)
        got = self._pick(self._head.unpack_from(head))
        ob_type = got[0]
        if ob_type != self.code_type and not self._is_type(ob_type, b"code"):
            self.failures += 1
            raise CodeReadError(f"pid {self.pid}: {code_addr:#x} is not a code object (type {ob_type:#x})")
        if 0 in got[2:]:
            self.failures += 1
            raise CodeReadError(f"pid {self.pid}: code object at {code_addr:#x} has a NULL name or file")
        return got[1:]  # (firstlineno, *pointers): the fingerprint

    def _is_type(self, ob_type: int, name: bytes) -> bool:
        expected = self._expected[name]
        if expected is not None:
            return ob_type == expected
        known = self._types.get(ob_type)
        if known is None:
            try:
                tp_name = _word(remote.read(self.pid, ob_type + self.offsets.type_name, 8), 0)
                known = remote.read(self.pid, tp_name, 8).split(b"\0", 1)[0]
            except MemoryReadError:
                known = b""
            self._types[ob_type] = known
        return known == name

    def _read_fields_many(self, todo: list[tuple[int, bytes, tuple[int, ...]]]) -> list[CodeInfo | PodflameError]:
        """Name, qualified name, file name and line table of each (address, head, fingerprint), or the error
        that says why not (ProcessGone when the process exited). Three system calls for all of them, not
        three per code object (a new Python process's drain reads dozens): one reads each object's four
        headers and the first READ_AHEAD bytes of their data (most names, paths and tables fit), one what
        did not fit, and one reads the heads again, since an object freed while its parts were read must
        not be named from them."""
        o = self.offsets
        name_header = (o.bytes_sval, o.bytes_sval) if o.names_are_bytes else (o.unicode_compact_size,
                                                                                o.unicode_ascii_size)
        headers = [name_header[0]] * 3 + [o.bytes_sval]
        smallest = [name_header[1]] * 3 + [o.bytes_sval]
        pointers_of: list[list[int]] = []
        for _, first_head, _ in todo:
            name_p = _word(first_head, o.code_name)
            qual_p = _word(first_head, o.code_qualname) if o.code_qualname != NO_FIELD else name_p
            pointers_of.append([name_p, qual_p, _word(first_head, o.code_filename),
                                _word(first_head, o.code_linetable)])
        try:
            firsts_all = remote.read_many(self.pid, [
                (p, h + ahead) for pointers in pointers_of for p, h, ahead in zip(pointers, headers, READ_AHEAD,
                                                                                   strict=True)])
        except MemoryReadError as e:  # not allowed to read at all
            return [e] * len(todo)
        results: list[CodeInfo | PodflameError | None] = [None] * len(todo)
        pending: list[tuple[int, list[bytes | None], list[tuple[int, int, str]]]] = []  # index, data, plans
        rest: list[tuple[int, int]] = []
        for i, pointers in enumerate(pointers_of):
            try:
                firsts = firsts_all[4 * i: 4 * i + 4]
                for k, got in enumerate(firsts):
                    if got is None:  # too near the end of its mapping to read ahead: the bare header
                        firsts[k] = got = remote.read(self.pid, pointers[k], smallest[k])
                    want = self._table_type if k == 3 else b"str"
                    if not self._is_type(_word(got, o.object_type), want):
                        raise CodeReadError(f"its {('name', 'qualname', 'filename', 'line table')[k]} is not a "
                                            f"{want.decode()} object")
                plans = [self._string_plan(p, got or b"") for p, got in zip(pointers[:3], firsts[:3], strict=True)]
                table_len = _word(firsts[3] or b"", o.bytes_size)
                if not 0 <= table_len <= MAX_LINETABLE:
                    raise CodeReadError(f"line table length {table_len}")
                plans.append((pointers[3] + o.bytes_sval, table_len, ""))
            except (MemoryReadError, CodeReadError, ProcessGone) as e:
                results[i] = e
                continue
            datas: list[bytes | None] = []
            for p, got, (addr, size, _) in zip(pointers, firsts, plans, strict=True):
                start = addr - p
                have = (got or b"")[start:start + size]
                if len(have) == size:
                    datas.append(have)
                else:
                    datas.append(None)
                    rest.append((addr, size))
            pending.append((i, datas, plans))
        more = iter(remote.read_many(self.pid, rest)) if rest else iter(())
        complete: list[tuple[int, list[bytes], list[tuple[int, int, str]]]] = []
        for i, datas, plans in pending:
            filled = [d if d is not None else next(more) for d in datas]
            if any(d is None for d in filled):
                results[i] = CodeReadError("string data unreadable")
            else:
                complete.append((i, [d or b"" for d in filled], plans))
        # the objects may have been freed while their parts were read: each must be the same one still
        again = remote.read_many(self.pid, [(todo[i][0], o.code_size) for i, _, _ in complete])
        for (i, parts, plans), head in zip(complete, again, strict=True):
            code_addr, fp = todo[i][0], todo[i][2]
            try:
                if head is None:
                    raise MemoryReadError(f"pid {self.pid}: cannot read {o.code_size} bytes at {code_addr:#x}")
                if self._check_head(code_addr, head) != fp:
                    raise CodeReadError("the code object changed while it was read")
                texts = [_decode(d, enc) for d, (_, _, enc) in zip(parts[:3], plans[:3], strict=True)]
            except (MemoryReadError, CodeReadError, ProcessGone) as e:
                results[i] = e
                continue
            results[i] = CodeInfo(name=texts[0], qualname=texts[1], filename=texts[2], firstlineno=fp[0],
                                  linetable=parts[3], linetable_format=o.linetable_format, fingerprint=fp)
        return [r if r is not None else CodeReadError("not read") for r in results]

    def _string_plan(self, addr: int, h: bytes) -> tuple[int, int, str]:
        """(data address, data size, encoding) of a compact str object (2.7: a PyStringObject) from its header."""
        o = self.offsets
        if o.names_are_bytes:
            if len(h) < o.bytes_sval:
                raise CodeReadError("str header unreadable")
            length = _word(h, o.bytes_size)
            if not 0 <= length <= MAX_STRING:
                raise CodeReadError(f"str length {length}")
            return addr + o.bytes_sval, length, BYTES_NAME
        if len(h) < o.unicode_ascii_size:
            raise CodeReadError("str header unreadable")
        length = _word(h, o.unicode_length)
        state = struct.unpack_from("<I", h, o.unicode_state)[0]
        if not state >> o.unicode_compact_bit & 1:
            raise CodeReadError("not a compact str (names in code objects always are)")
        if not 0 <= length <= MAX_STRING:
            raise CodeReadError(f"str length {length}")
        kind = state >> o.unicode_kind_shift & 7
        if state >> o.unicode_ascii_bit & 1:
            if kind != 1:
                raise CodeReadError(f"ASCII str of kind {kind}")
            return addr + o.unicode_ascii_size, length, "ascii"
        enc = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}.get(kind)
        if enc is None:
            raise CodeReadError(f"str kind {kind}")
        return addr + o.unicode_compact_size, length * kind, enc


def _head_fields(o: PyOffsets) -> tuple[struct.Struct, Callable[[tuple[int, ...]], tuple[int, ...]]]:
    """A struct that reads a code object's type, first line and name/qualname/file name/line table pointers
    from its head in one call, and what picks them, in that order, from its answer."""
    wanted = [(o.object_type, "Q"), (o.code_firstlineno, "i")] + [
        (off, "Q") for off in (o.code_name, o.code_qualname, o.code_filename, o.code_linetable) if off != NO_FIELD]
    by_offset = sorted(range(len(wanted)), key=lambda i: wanted[i][0])
    fmt, at = "<", 0
    for i in by_offset:
        offset, code = wanted[i]
        if offset < at:
            raise ValueError(f"code object fields overlap at offset {offset}")
        fmt += (f"{offset - at}x" if offset > at else "") + code
        at = offset + struct.calcsize("<" + code)
    return struct.Struct(fmt), itemgetter(*(by_offset.index(i) for i in range(len(wanted))))


def _word(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", data, offset)[0])


def _decode(data: bytes, encoding: str) -> str:
    if encoding == BYTES_NAME:  # 2.7 names are bytes: UTF-8 by convention, not by rule
        return data.decode("utf-8", "backslashreplace")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise CodeReadError(f"str data does not decode as {encoding}") from e
