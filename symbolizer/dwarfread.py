"""A small, fast reader for the parts of DWARF 2-5 a symbolizer needs: unit headers, abbreviations,
the attributes of code DIEs, range lists, and line programs.

pyelftools parses every DIE and line row through generic construct structures; on libpython3.11
that is ~0.5 s per big compile unit. Here DIEs are read straight from the section bytes with one
abbreviation-driven loop, only the attributes asked for are decoded (the rest are skipped by
form), and subtrees that cannot hold code (types, variables) are jumped over with DW_AT_sibling.
pyelftools still opens the ELF and hands over (decompressed) section bytes.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import Literal

from podflame.errors import BinaryFormatError

# attributes
AT_sibling, AT_name, AT_stmt_list, AT_low_pc, AT_high_pc, AT_language = 0x01, 0x03, 0x10, 0x11, 0x12, 0x13
AT_comp_dir, AT_abstract_origin, AT_specification, AT_ranges = 0x1B, 0x31, 0x47, 0x55
AT_call_file, AT_call_line, AT_linkage_name, AT_MIPS_linkage_name = 0x58, 0x59, 0x6E, 0x2007
AT_str_offsets_base, AT_addr_base, AT_rnglists_base = 0x72, 0x73, 0x74
AT_GNU_ranges_base, AT_GNU_addr_base = 0x2132, 0x2133
# tags
TAG_compile_unit, TAG_partial_unit, TAG_skeleton_unit = 0x11, 0x3C, 0x4A
TAG_subprogram, TAG_inlined_subroutine, TAG_lexical_block = 0x2E, 0x1D, 0x0B
TAG_namespace, TAG_module, TAG_try_block, TAG_catch_block = 0x39, 0x1E, 0x32, 0x25

_ADDR_FORMS = {0x01, 0x1B, 0x29, 0x2A, 0x2B, 0x2C, 0x1F01}
_REF_CU_FORMS = {0x11, 0x12, 0x13, 0x14, 0x15}  # CU-relative references
_FIXED = {0x0B: 1, 0x05: 2, 0x06: 4, 0x07: 8, 0x1E: 16, 0x0C: 1, 0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8,
          0x20: 8, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4, 0x19: 0, 0x21: 0}


class FormatError(BinaryFormatError):
    """DWARF this reader cannot decode."""


def uleb(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    c = data[pos + 1]
    if c < 0x80:
        return (b & 0x7F) | (c << 7), pos + 2
    result, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = data[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos + 1
        shift += 7


def sleb(data: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, pos


def cstr(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.index(b"\0", pos)
    return data[pos:end], end + 1


ByteOrder = Literal["little", "big"]


def as_int(v: object) -> int:
    """An attribute value its form makes an integer (`Reader.read` gives values as objects)."""
    if not isinstance(v, int):
        raise FormatError(f"expected an integer attribute value, got {type(v).__name__}")
    return v


class Sections:
    """The DWARF sections of one file, as bytes (b"" when absent)."""

    __slots__ = ("abbrev", "addr", "aranges", "info", "line", "line_str", "little", "ranges", "rnglists", "str",
                 "str_offsets")
    abbrev: bytes
    addr: bytes
    aranges: bytes
    info: bytes
    line: bytes
    line_str: bytes
    ranges: bytes
    rnglists: bytes
    str: bytes
    str_offsets: bytes

    def __init__(self, little: bool = True, **sections: bytes) -> None:
        self.little = little
        for name in self.__slots__:
            if name != "little":
                setattr(self, name, sections.get(name, b""))


class Abbrev:
    __slots__ = ("children", "pc", "specs", "tag")

    def __init__(self, tag: int, children: bool, specs: tuple[tuple[int, int, int], ...],
                 pc: bool | None = None) -> None:
        self.tag = tag
        self.children = children
        self.specs = specs  # (attribute, form, implicit const)
        # can describe code: declarations and abstract instances of inlined functions cannot
        self.pc = any(at in (AT_low_pc, AT_ranges) for at, _, _ in specs) if pc is None else pc


# how a planned attribute is read (see Reader.plans)
_K_INT, _K_REF, _K_STRP, _K_LINE_STRP, _K_REF_ADDR, _K_NONE, _K_STRX, _K_ADDRX, _K_RNGLISTX = range(9)
_K_ULEB, _K_SLEB, _K_BLOCK, _K_STRING, _K_IMPLICIT = range(9, 14)
# (steps, trailing gap, offset of a lone fixed-size DW_AT_sibling or -1, its size, nothing wanted)
Plan = tuple[tuple[tuple[int, int, int, int, int, bool], ...], int, int, int, bool]


class Unit:
    __slots__ = ("abbrevs", "addr_base", "address_size", "base", "die_offset", "end", "offset", "offset_size",
                 "plans", "rnglists_base", "str_offsets_base", "top", "version")

    def __init__(self, offset: int, end: int, die_offset: int, version: int, address_size: int, offset_size: int,
                 abbrevs: dict[int, Abbrev], str_offsets_base: int = 8, addr_base: int = 8) -> None:
        self.offset, self.end, self.die_offset, self.version = offset, end, die_offset, version
        self.address_size, self.offset_size, self.abbrevs = address_size, offset_size, abbrevs
        # from the unit DIE
        self.str_offsets_base = str_offsets_base
        self.addr_base = addr_base
        self.rnglists_base = 0
        self.base = 0  # DW_AT_low_pc of the unit: base of relative ranges
        self.top: dict[int, object] = {}
        self.plans: dict[frozenset[int] | None, dict[int, Plan]] = {}


class Reader:
    """DIE-level access to one file's .debug_info."""

    def __init__(self, s: Sections) -> None:
        self.s = s
        self.e = "<" if s.little else ">"
        self._abbrevs: dict[int, dict[int, Abbrev]] = {}
        self._units: dict[int, Unit] = {}
        self._unit_starts: list[int] | None = None

    # -- primitives --------------------------------------------------------------------------

    def _u(self, data: bytes, pos: int, size: int) -> int:
        return int.from_bytes(data[pos:pos + size], "little" if self.s.little else "big")

    # -- units -------------------------------------------------------------------------------

    def unit_offsets(self) -> Iterator[int]:
        info = self.s.info
        pos = 0
        while pos + 11 <= len(info):
            yield pos
            length = self._u(info, pos, 4)
            if length == 0xFFFFFFFF:
                length = self._u(info, pos + 4, 8) + 12
            else:
                length += 4
            if length <= 4:
                return
            pos += length

    def unit_at(self, offset: int) -> Unit:
        u = self._units.get(offset)
        if u is not None:
            return u
        info = self.s.info
        pos = offset
        length = self._u(info, pos, 4)
        pos += 4
        osz = 4
        if length == 0xFFFFFFFF:
            length = self._u(info, pos, 8)
            pos += 8
            osz = 8
        end = pos + length
        version = self._u(info, pos, 2)
        pos += 2
        if not 2 <= version <= 5:
            raise FormatError(f"unit at {offset:#x}: DWARF version {version}")
        if version >= 5:
            unit_type = info[pos]
            asz = info[pos + 1]
            abbrev_off = self._u(info, pos + 2, osz)
            pos += 2 + osz
            if unit_type in (4, 5):  # skeleton, split_compile: dwo id
                pos += 8
            elif unit_type in (2, 6):  # type units
                pos += 8 + osz
        else:
            abbrev_off = self._u(info, pos, osz)
            asz = info[pos + osz]
            pos += osz + 1
        u = Unit(offset, min(end, len(info)), pos, version, asz, osz, self._abbrev_table(abbrev_off))
        code, p = uleb(info, pos)
        if code:
            top, _ = self.attrs(u, p, code, None)
            u.top = top
            # the bases first (other attributes' decoding needs them), raw as read
            u.str_offsets_base = as_int(top.get(AT_str_offsets_base, 8))
            u.addr_base = as_int(top.get(AT_addr_base, top.get(AT_GNU_addr_base, 8)))
            u.rnglists_base = as_int(top.get(AT_rnglists_base, top.get(AT_GNU_ranges_base, 0)))
            top, _ = self.attrs(u, p, code, None)  # again, now that indexed forms can resolve
            u.top = top
            lo = top.get(AT_low_pc)
            u.base = lo if isinstance(lo, int) else 0
        self._units[offset] = u
        return u

    def unit_containing(self, offset: int) -> Unit:
        if self._unit_starts is None:
            self._unit_starts = list(self.unit_offsets())
        from bisect import bisect_right
        i = bisect_right(self._unit_starts, offset) - 1
        if i < 0:
            raise FormatError(f"no unit at {offset:#x}")
        return self.unit_at(self._unit_starts[i])

    def _abbrev_table(self, offset: int) -> dict[int, Abbrev]:
        t = self._abbrevs.get(offset)
        if t is not None:
            return t
        data = self.s.abbrev
        t = {}
        pos = offset
        n = len(data)
        # one pass per table of every CU a lookup reaches (libpython: ~150 abbreviations a CU), so
        # one-byte codes, tags and pairs are read inline and `pc` is found on the way
        while pos < n:
            code = data[pos]
            if code < 0x80:
                pos += 1
            else:
                code, pos = uleb(data, pos)
            if code == 0:
                break
            tag = data[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = uleb(data, pos)
            children = data[pos] == 1
            pos += 1
            specs = []
            pc = False
            while True:  # (attribute, form) pairs: one byte each but for vendor attributes
                at = data[pos]
                form = data[pos + 1]
                if at < 0x80 and form < 0x80:
                    pos += 2
                else:
                    at, pos = uleb(data, pos)
                    form, pos = uleb(data, pos)
                if at == 0 and form == 0:
                    break
                if at in (AT_low_pc, AT_ranges):
                    pc = True
                if form == 0x21:
                    implicit, pos = sleb(data, pos)
                    specs.append((at, form, implicit))
                else:
                    specs.append((at, form, 0))
            t[code] = Abbrev(tag, children, tuple(specs), pc)
        self._abbrevs[offset] = t
        return t

    # -- DIEs --------------------------------------------------------------------------------

    def attrs(self, u: Unit, pos: int, code: int,
              want: frozenset[int] | None) -> tuple[dict[int, object], int]:
        """Decode the attributes of a DIE with abbreviation `code` (read after its code, at `pos`).
        Only attributes in `want` are decoded (None: all); returns them and the DIE's end.
        Strings come back as str, references as absolute .debug_info offsets, high_pc as given
        (a length when its form is a constant: see `high_pc_is_length`)."""
        plans = self.plans(u, want)
        plan = plans.get(code)
        if plan is None:
            plan = plans[code] = self.plan(u, u.abbrevs[code], want)
        return self.read(u, pos, plan)

    @staticmethod
    def plans(u: Unit, want: frozenset[int] | None) -> dict[int, Plan]:
        """Plans by abbreviation code for one unit and one set of wanted attributes, filled as met:
        hot loops look them up by code and build missing ones with `plan`."""
        plans = u.plans.get(want)
        if plans is None:
            plans = u.plans[want] = {}
        return plans

    def plan(self, u: Unit, ab: Abbrev, want: frozenset[int] | None) -> Plan:
        """How to read a DIE of abbreviation `ab`: steps (gap, attribute, form, kind, size or implicit
        value, wanted) for each wanted or variable-size attribute; runs of unwanted fixed-size
        attributes become gaps. A DIE with nothing wanted and fixed size is one addition, and a
        lone wanted DW_AT_sibling after fixed-size attributes is read in place (`skip`)."""
        steps = []
        gap = 0
        osz, asz = u.offset_size, u.address_size
        for at, form, implicit in ab.specs:
            wanted = want is None or at in want
            size = _FIXED.get(form)
            kind = _K_INT
            if form in (0x0E, 0x1F, 0x17, 0x1D, 0x1F21, 0x10):
                size = asz if (form == 0x10 and u.version == 2) else osz
                kind = {0x0E: _K_STRP, 0x1F: _K_LINE_STRP, 0x17: _K_INT, 0x10: _K_REF_ADDR}.get(form, _K_NONE)
            elif form == 0x01:
                size = asz
            elif form in (0x1C, 0x24, 0x1F20):  # ref_sup4/8, GNU_ref_alt: another file's DIE
                size, kind = (4 if form == 0x1C else (8 if form == 0x24 else osz)), _K_NONE
            elif form == 0x21:
                kind = _K_IMPLICIT
            elif form == 0x19:
                kind = _K_IMPLICIT
                implicit = 1
            elif form in (0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23, 0x1F01, 0x1F02):
                size, kind = -1, _K_ULEB
            elif form == 0x0D:
                size, kind = -1, _K_SLEB
            elif form in (0x18, 0x09, 0x0A, 0x03, 0x04):
                size, kind = -1, _K_BLOCK
            elif form == 0x08:
                size, kind = -1, _K_STRING
            elif size is None:
                raise FormatError(f"unknown DW_FORM {form:#x}")
            assert size is not None  # every branch above sets it or raises
            if kind in (_K_INT, _K_ULEB):  # the value's meaning by form
                if form in _REF_CU_FORMS:
                    kind = _K_REF if kind == _K_INT else kind
                elif form in (0x1A, 0x25, 0x26, 0x27, 0x28, 0x1F02):
                    kind = _K_STRX if kind == _K_INT else kind
                elif form in _ADDR_FORMS and form != 0x01:
                    kind = _K_ADDRX if kind == _K_INT else kind
            if size >= 0 and not wanted and kind != _K_IMPLICIT:
                gap += size
                continue
            if kind == _K_IMPLICIT and not wanted:
                continue
            steps.append((gap, at, form, kind, implicit if kind == _K_IMPLICIT else size, wanted))
            gap = 0
        sib_at, sib_size = -1, 0
        if len(steps) == 1 and steps[0][1] == AT_sibling and steps[0][3] == _K_REF:
            sib_at, sib_size = steps[0][0], steps[0][4]
        return tuple(steps), gap, sib_at, sib_size, not any(st[5] for st in steps)

    def read(self, u: Unit, pos: int, plan: Plan) -> tuple[dict[int, object], int]:
        """Run a plan (see `plan`) at `pos`: (wanted attributes, end of the DIE)."""
        steps, tail = plan[0], plan[1]
        out: dict[int, object] = {}
        if not steps:
            return out, pos + tail
        data = self.s.info
        le: ByteOrder = "little" if self.s.little else "big"
        for gap, at, form, kind, size, wanted in steps:
            pos += gap
            if kind == _K_IMPLICIT:
                out[at] = size
                continue
            if size >= 0:
                v = int.from_bytes(data[pos:pos + size], le)
                pos += size
            elif kind == _K_ULEB:
                b = data[pos]
                if b < 0x80:
                    v = b
                    pos += 1
                else:
                    v, pos = uleb(data, pos)
                if form in _REF_CU_FORMS:
                    v = u.offset + v
                    if wanted:
                        out[at] = ("ref", v)
                    continue
                if form in (0x1A, 0x1F02):
                    if wanted:
                        out[at] = self._strx(u, v)
                    continue
                if form in (0x1B, 0x1F01):
                    if wanted:
                        out[at] = self._addrx(u, v)
                    continue
                if form == 0x23:
                    if wanted:
                        out[at] = ("rnglistx", v)
                    continue
            elif kind == _K_SLEB:
                v, pos = sleb(data, pos)
            elif kind == _K_BLOCK:
                if form == 0x18 or form == 0x09:
                    n, pos = uleb(data, pos)
                else:
                    w = 1 if form == 0x0A else (2 if form == 0x03 else 4)
                    n = int.from_bytes(data[pos:pos + w], le)
                    pos += w
                pos += n
                continue
            else:  # inline string
                end = data.index(b"\0", pos)
                if wanted:
                    out[at] = data[pos:end].decode("utf-8", "surrogateescape")
                pos = end + 1
                continue
            if not wanted:
                continue
            if kind in (_K_INT, _K_ULEB, _K_SLEB):  # udata/sdata: gas's DW_AT_high_pc in DWARF 5
                out[at] = v
            elif kind == _K_REF:
                out[at] = ("ref", u.offset + v)
            elif kind == _K_STRP:
                out[at] = self._str(self.s.str, v)
            elif kind == _K_LINE_STRP:
                out[at] = self._str(self.s.line_str, v)
            elif kind == _K_REF_ADDR:
                out[at] = ("ref", v)
            elif kind == _K_STRX:
                out[at] = self._strx(u, v)
            elif kind == _K_ADDRX:
                out[at] = self._addrx(u, v)
            else:
                out[at] = None  # a string or DIE in a supplementary file we do not read
        return out, pos + tail

    def skip(self, u: Unit, pos: int, plan: Plan) -> tuple[int, int]:
        """(end of the DIE, its DW_AT_sibling or 0) for a plan wanting at most the sibling: the
        walks' common case, without building a dict."""
        steps, tail, sib_at, sib_size, nothing = plan
        if not steps:
            return pos + tail, 0
        data = self.s.info
        if sib_at >= 0:
            at = pos + sib_at
            sib = u.offset + int.from_bytes(data[at:at + sib_size], "little" if self.s.little else "big")
            return at + sib_size + tail, sib
        if not nothing:
            a, pos = self.read(u, pos, plan)
            ref = a.get(AT_sibling)
            return pos, ref[1] if isinstance(ref, tuple) else 0
        for gap, _, form, kind, _, _ in steps:  # unwanted variable-size attributes
            pos += gap
            if kind == _K_BLOCK and form == 0x18:  # exprloc: locations, call values
                n = data[pos]
                if n < 0x80:
                    pos += 1 + n
                else:
                    n, pos = uleb(data, pos)
                    pos += n
            elif kind in (_K_ULEB, _K_SLEB):
                while data[pos] >= 0x80:
                    pos += 1
                pos += 1
            elif kind == _K_STRING:
                pos = data.index(b"\0", pos) + 1
            elif kind == _K_BLOCK:
                if form == 0x09:
                    n, pos = uleb(data, pos)
                else:
                    w = 1 if form == 0x0A else (2 if form == 0x03 else 4)
                    n = int.from_bytes(data[pos:pos + w], "little" if self.s.little else "big")
                    pos += w
                pos += n
        return pos + tail, 0

    def _str(self, sec: bytes, off: int) -> str | None:
        if off >= len(sec):
            return None
        end = sec.find(b"\0", off)
        return sec[off:end if end >= 0 else len(sec)].decode("utf-8", "surrogateescape")

    def _strx(self, u: Unit, i: int) -> str | None:
        pos = u.str_offsets_base + i * u.offset_size
        if pos + u.offset_size > len(self.s.str_offsets):
            return None
        return self._str(self.s.str, self._u(self.s.str_offsets, pos, u.offset_size))

    def _addrx(self, u: Unit, i: int) -> int:
        pos = u.addr_base + i * u.address_size
        return self._u(self.s.addr, pos, u.address_size)

    def die_attrs(self, offset: int, want: frozenset[int]) -> tuple[int, dict[int, object]]:
        """(tag, wanted attributes) of the DIE at an absolute .debug_info offset (any unit)."""
        u = self.unit_containing(offset)
        code, pos = uleb(self.s.info, offset)
        if code == 0:
            return 0, {}
        return u.abbrevs[code].tag, self.attrs(u, pos, code, want)[0]

    # -- ranges ------------------------------------------------------------------------------

    def ranges(self, u: Unit, value: object) -> list[tuple[int, int]]:
        """[low, high) list of a DW_AT_ranges value (offset or ("rnglistx", i))."""
        if u.version >= 5:
            data = self.s.rnglists
            if isinstance(value, tuple):
                off = u.rnglists_base + self._u(data, u.rnglists_base + value[1] * u.offset_size, u.offset_size)
            else:
                off = as_int(value)
            return self._rnglist(u, data, off)
        data = self.s.ranges
        pos = as_int(value)
        base = u.base
        asz = u.address_size
        maxa = (1 << (8 * asz)) - 1
        out = []
        while pos + 2 * asz <= len(data):
            a, b = self._u(data, pos, asz), self._u(data, pos + asz, asz)
            pos += 2 * asz
            if a == 0 and b == 0:
                break
            if a == maxa:
                base = b
                continue
            out.append((base + a, base + b))
        return out

    def _rnglist(self, u: Unit, data: bytes, pos: int) -> list[tuple[int, int]]:
        base = u.base
        asz = u.address_size
        out = []
        while pos < len(data):
            kind = data[pos]
            pos += 1
            if kind == 4:  # offset_pair: most entries (GCC: after one base_addressx)
                a, pos = uleb(data, pos)
                b, pos = uleb(data, pos)
                out.append((base + a, base + b))
            elif kind == 0:  # end_of_list
                break
            elif kind == 1:  # base_addressx
                i, pos = uleb(data, pos)
                base = self._addrx(u, i)
            elif kind == 2:  # startx_endx
                i, pos = uleb(data, pos)
                j, pos = uleb(data, pos)
                out.append((self._addrx(u, i), self._addrx(u, j)))
            elif kind == 3:  # startx_length
                i, pos = uleb(data, pos)
                n, pos = uleb(data, pos)
                a = self._addrx(u, i)
                out.append((a, a + n))
            elif kind == 5:  # base_address
                base = self._u(data, pos, asz)
                pos += asz
            elif kind == 6:  # start_end
                out.append((self._u(data, pos, asz), self._u(data, pos + asz, asz)))
                pos += 2 * asz
            elif kind == 7:  # start_length
                a = self._u(data, pos, asz)
                n, pos = uleb(data, pos + asz)
                out.append((a, a + n))
            else:
                raise FormatError(f"unknown DW_RLE {kind}")
        return out

    def die_ranges(self, u: Unit, a: dict[int, object], high_form_is_length: bool) -> list[tuple[int, int]]:
        if AT_ranges in a:
            return [(lo, hi) for lo, hi in self.ranges(u, a[AT_ranges]) if hi > lo]
        lo = a.get(AT_low_pc)
        hi = a.get(AT_high_pc)
        if not isinstance(lo, int) or not isinstance(hi, int):
            return []
        if high_form_is_length:
            hi += lo
        return [(lo, hi)] if hi > lo else []

    # -- aranges -----------------------------------------------------------------------------

    def aranges(self) -> list[tuple[int, int, int]] | None:
        """(start, end, unit offset) from .debug_aranges, None when the section is absent."""
        data = self.s.aranges
        if not data:
            return None
        out = []
        pos = 0
        while pos + 12 <= len(data):
            start = pos
            length = self._u(data, pos, 4)
            pos += 4
            osz = 4
            if length == 0xFFFFFFFF:
                length = self._u(data, pos, 8)
                pos += 8
                osz = 8
            end = pos + length
            pos += 2  # version
            cu_off = self._u(data, pos, osz)
            pos += osz
            asz, seg = data[pos], data[pos + 1]
            pos += 2
            tuple_size = 2 * asz + seg
            # tuples start aligned to twice the address size, from the set's start
            pos = start + -(-(pos - start) // tuple_size) * tuple_size if tuple_size else pos
            while pos + tuple_size <= end:
                a = self._u(data, pos + seg, asz)
                n = self._u(data, pos + seg + asz, asz)
                pos += tuple_size
                if a == 0 and n == 0:
                    break
                if n:
                    out.append((a, a + n, cu_off))
            if length == 0:
                break
            pos = end
        return out


def high_pc_is_length(ab: Abbrev) -> bool:
    for at, form, _ in ab.specs:
        if at == AT_high_pc:
            return form not in _ADDR_FORMS
    return False


# -- line programs ---------------------------------------------------------------------------

_NEVER = 1 << 64  # an address no row reaches


class LineTable:
    """One line program, run lazily: `find(address)` runs it only as far as needed to answer.

    Rows are kept in program order while running; `addr`/`file`/`line` (None until the program has
    run to its end) are in lookup order: sequences by start address, rows in program order within
    a sequence (so at one address the last row wins a bisect_right, and a sequence's end row comes
    before the next sequence starting there). An end row has file and line -1.

    Only rows that change something are kept: a row with its predecessor's file and line adds
    nothing to a bisect, and of rows at one address only the last counts (libpython: 620k rows
    emitted, 214k kept). Answering from a partly run program is exact because addresses never
    decrease inside a sequence: once a row past `address` was emitted in the sequence that starts
    at or before it, every row at or before `address` is known. (A program whose set_address goes backwards inside
    a sequence is run to its end and sorted.) Sequences are assumed disjoint, as in binutils."""

    __slots__ = ("_addrs", "_files", "_lines", "_seqs", "_state", "addr", "file", "files", "first", "line", "size")

    def __init__(self, files: list[str], first: int, state: list, size: int) -> None:
        self.size = size  # bytes of the program: at least one per row, so a bound on the rows to come
        self.files = files  # joined as binutils does; index = DWARF file number - first
        self.first = first  # 1 before DWARF 5, 0 from DWARF 5
        self.addr: array | None = None
        self.file: array | None = None
        self.line: array | None = None
        self._addrs, self._files, self._lines = array("Q"), array("q"), array("q")
        self._seqs: list[tuple[int, int, int]] = []  # finished: (first address, first row, end row)
        self._state: list | None = state  # the interpreter's registers between runs (see _run)

    def complete(self) -> LineTable:
        if self._state is not None:
            _run(self, _NEVER)
        return self

    def find(self, address: int) -> tuple[int, int] | None:
        """(file index, line) of the row covering `address`, None when no row does."""
        while True:
            if self._state is None:
                addrs = self.addr
                i = bisect_right(addrs, address) - 1  # type: ignore[arg-type]  # set once _state is None
                if i < 0 or self.line[i] < 0:  # type: ignore[index]
                    return None
                return self.file[i], self.line[i]  # type: ignore[index]
            addrs = self._addrs
            for first, i, j in self._seqs:
                if first <= address < addrs[j - 1]:
                    k = bisect_right(addrs, address, i, j) - 1
                    return (self._files[k], self._lines[k]) if k >= i else None
            i, n, emitted = self._state[6], len(addrs), self._state[7]  # the sequence being run
            if i < n and 0 < addrs[i] <= address < emitted:
                k = bisect_right(addrs, address, i, n) - 1
                return self._files[k], self._lines[k]
            try:
                _run(self, address)
            except Exception:  # a corrupt program: no lines from it (the caller hears of it once)
                self.addr, self.file, self.line = array("Q"), array("q"), array("q")
                self._state = None
                raise


def line_table(r: Reader, u: Unit, offset: int, comp_dir: str | None) -> LineTable:
    s = r.s
    data = s.line
    le: ByteOrder = "little" if s.little else "big"

    def num(pos: int, size: int) -> int:
        return int.from_bytes(data[pos:pos + size], le)

    pos = offset
    length = num(pos, 4)
    pos += 4
    osz = 4
    if length == 0xFFFFFFFF:
        length = num(pos, 8)
        pos += 8
        osz = 8
    end = min(pos + length, len(data))
    version = num(pos, 2)
    pos += 2
    if version >= 5:
        pos += 2  # address_size, segment_selector_size
    header_length = num(pos, osz)
    pos += osz
    program = pos + header_length
    min_inst = data[pos]
    pos += 1
    if version >= 4:
        pos += 1  # maximum_operations_per_instruction (VLIW only)
    pos += 1  # default_is_stmt
    line_base = data[pos] - 256 if data[pos] > 127 else data[pos]
    line_range = data[pos + 1]
    opcode_base = data[pos + 2]
    pos += 3
    std_lengths = list(data[pos:pos + opcode_base - 1])
    pos += opcode_base - 1
    dirs: list[str] = []
    raw_files: list[tuple[str, int]] = []
    if version >= 5:
        fake = Unit(0, 0, 0, 5, u.address_size, osz, {}, u.str_offsets_base, u.addr_base)

        def entries(pos: int) -> tuple[list[dict[int, object]], int]:
            nfmt = data[pos]
            pos += 1
            fmts = []
            for _ in range(nfmt):
                ct, pos = uleb(data, pos)
                form, pos = uleb(data, pos)
                fmts.append((ct, form))
            count, pos = uleb(data, pos)
            out = []
            for _ in range(count):
                e: dict[int, object] = {}
                for ct, form in fmts:
                    e[ct], pos = _line_form(r, fake, data, pos, form, le)
                out.append(e)
            return out, pos

        ds, pos = entries(pos)
        dirs = [name if isinstance(name := d.get(1), str) else "" for d in ds]
        fs, pos = entries(pos)
        raw_files = [(name if isinstance(name := f.get(1), str) else "??", as_int(f.get(2, 0) or 0)) for f in fs]
        first = 0
    else:
        while data[pos]:
            d, pos = cstr(data, pos)
            dirs.append(d.decode("utf-8", "surrogateescape"))
        pos += 1
        while data[pos]:
            name, pos = cstr(data, pos)
            di, pos = uleb(data, pos)
            _, pos = uleb(data, pos)
            _, pos = uleb(data, pos)
            raw_files.append((name.decode("utf-8", "surrogateescape"), di))
        first = 1
    files = [_join(name, di, dirs, version, comp_dir) for name, di in raw_files]

    def define_file(p: int) -> None:  # DW_LNE_define_file (before DWARF 5)
        name, p = cstr(data, p)
        di, p = uleb(data, p)
        files.append(_join(name.decode("utf-8", "surrogateescape"), di, dirs, version, comp_dir))

    if line_range == 0:
        raise FormatError("line program with line_range 0")
    addr_adv = [0] * 256
    line_adv = [0] * 256
    for op in range(opcode_base, 256):
        adj = op - opcode_base
        addr_adv[op] = (adj // line_range) * min_inst
        line_adv[op] = line_base + adj % line_range
    consts = (data, end, min_inst, opcode_base, std_lengths, le, first, define_file if version < 5 else None,
              addr_adv, line_adv)
    # registers: constants, position, address, file, line, set_address went backwards, first row of the
    # sequence, address of the last row emitted (kept or not), file and line of the last row kept
    return LineTable(files, first, [consts, program, 0, 1 - first, 1, False, 0, -1, -1, -1], end - program)


def _line_form(r: Reader, u: Unit, data: bytes, pos: int, form: int, le: ByteOrder) -> tuple[object, int]:
    if form == 0x08:
        s, pos = cstr(data, pos)
        return s.decode("utf-8", "surrogateescape"), pos
    if form in (0x1F, 0x0E):
        v = int.from_bytes(data[pos:pos + u.offset_size], le)
        return r._str(r.s.line_str if form == 0x1F else r.s.str, v), pos + u.offset_size
    if form in (0x0F,):
        return uleb(data, pos)
    if form in _FIXED:
        n = _FIXED[form]
        return (int.from_bytes(data[pos:pos + n], le) if n <= 8 else None), pos + n
    if form in (0x1A,):
        i, pos = uleb(data, pos)
        return r._strx(u, i), pos
    if form == 0x09:
        n, pos = uleb(data, pos)
        return None, pos + n
    raise FormatError(f"line table form {form:#x}")


def _join(name: str, di: int, dirs: list[str], version: int, comp_dir: str | None) -> str:
    """binutils' concat_filename: absolute names as they are; else directory (made absolute with the
    compile directory when relative) joined with the name."""
    if name.startswith("/"):
        return name
    d = di if version >= 5 else di - 1
    sub = dirs[d] if 0 <= d < len(dirs) else None
    base = comp_dir if not sub or not sub.startswith("/") else None
    if not base:
        base, sub = sub, None
    if not base:
        return name
    return f"{base}/{sub}/{name}" if sub else f"{base}/{name}"


def _run(t: LineTable, target: int) -> None:
    """Run t's line program on from where it stopped, until a row past `target` is emitted in a
    sequence starting at or before it (then `find(target)` can answer), or to its end.

    This loop is most of the cost of a cold lookup (libpython: 1.6M opcodes), so it is written for
    CPython: locals only, the common opcodes first (special, set_column, negate_stmt, copy,
    advance_line), one-byte LEB128 operands read inline, special opcodes' effects precomputed.
    At the end, sequences are put in address order by slicing, not by sorting rows; a program
    whose sequences overlap or go backwards falls back to a sort."""
    consts, pos, address, file, line, backwards, seq_row, last_a, last_f, last_l = t._state  # type: ignore[misc]  # not None here
    data, end, min_inst, opcode_base, std_lengths, le, first, define_file, addr_adv, line_adv = consts
    addrs, files, lines, seqs = t._addrs, t._files, t._lines, t._seqs
    add_a, add_f, add_l = addrs.append, files.append, lines.append
    const_add = addr_adv[255]
    until = _NEVER if backwards else target  # rows past it: time to look whether to stop
    while pos < end:
        op = data[pos]
        pos += 1
        if op >= opcode_base:
            address += addr_adv[op]
            line += line_adv[op]
            if line != last_l or file != last_f:
                if address == last_a and last_a == addrs[-1]:  # a later row at one address wins
                    files[-1] = last_f = file
                    lines[-1] = last_l = line
                else:
                    add_a(address)
                    add_f(file)
                    add_l(line)
                    last_f, last_l = file, line
            last_a = address
            if address > until:
                if 0 < addrs[seq_row] <= target:
                    break
                until = _NEVER  # target is not in this sequence
        elif op == 5:  # set_column
            if data[pos] < 0x80:
                pos += 1
            else:
                _, pos = uleb(data, pos)
        elif op == 6:  # negate_stmt
            pass
        elif op == 1:  # copy
            if line != last_l or file != last_f:
                if address == last_a and last_a == addrs[-1]:
                    files[-1] = last_f = file
                    lines[-1] = last_l = line
                else:
                    add_a(address)
                    add_f(file)
                    add_l(line)
                    last_f, last_l = file, line
            last_a = address
            if address > until:
                if 0 < addrs[seq_row] <= target:
                    break
                until = _NEVER
        elif op == 3:  # advance_line
            b = data[pos]
            if b < 0x80:
                line += b - 0x80 if b & 0x40 else b
                pos += 1
            elif data[pos + 1] < 0x80:  # two bytes: |delta| < 8192
                b = (b & 0x7F) | (data[pos + 1] << 7)
                line += b - 0x4000 if b & 0x2000 else b
                pos += 2
            else:
                v, pos = sleb(data, pos)
                line += v
        elif op == 4:  # set_file
            b = data[pos]
            if b < 0x80:
                file = b - first
                pos += 1
            else:
                v, pos = uleb(data, pos)
                file = v - first
        elif op == 0:  # extended
            n, pos = uleb(data, pos)
            if n == 0:
                continue
            sub = data[pos]
            if sub == 1:  # end_sequence
                add_a(address)
                add_f(-1)
                add_l(-1)
                n_rows = len(addrs)
                start = addrs[seq_row]
                if start == 0:  # a discarded function's tombstone: drop its sequence
                    del addrs[seq_row:], files[seq_row:], lines[seq_row:]
                else:
                    seqs.append((start, seq_row, n_rows))
                seq_row = len(addrs)
                address, file, line = 0, 1 - first, 1
                last_a = last_f = last_l = -1
                pos += n
                if not backwards:
                    if 0 < start <= target < addrs[n_rows - 1]:
                        break  # the sequence just finished holds target
                    until = target
                continue
            if sub == 2:  # set_address
                new = int.from_bytes(data[pos + 1:pos + n], le)
                if new < address and len(addrs) > seq_row:
                    backwards = True
                    until = target = _NEVER  # rows out of order: run to the end, then sort
                address = new
            elif sub == 3 and define_file is not None:
                define_file(pos + 1)
            pos += n
        elif op == 2:  # advance_pc
            v, pos = uleb(data, pos)
            address += v * min_inst
        elif op == 8:  # const_add_pc
            address += const_add
        elif op == 9:  # fixed_advance_pc
            address += int.from_bytes(data[pos:pos + 2], le)
            pos += 2
        elif op == 7 or op == 10 or op == 11:  # basic_block, prologue_end, epilogue_begin
            pass
        else:  # set_isa and unknown standard opcodes: skip their LEB128 operands
            for _ in range(std_lengths[op - 1] if op - 1 < len(std_lengths) else 0):
                _, pos = uleb(data, pos)
    else:  # the end of the program
        del addrs[seq_row:], files[seq_row:], lines[seq_row:]  # an unterminated last sequence
        t.addr, t.file, t.line = _in_address_order(addrs, files, lines, seqs, backwards)
        t._addrs = t._files = t._lines = None  # type: ignore[assignment]  # the program is done: free them
        t._seqs = []
        t._state = None
        return
    t._state = [consts, pos, address, file, line, backwards, seq_row, last_a, last_f, last_l]


def _in_address_order(addrs: array, files: array, lines: array, seqs: list[tuple[int, int, int]],
                      backwards: bool) -> tuple[array, array, array]:
    order = sorted(seqs)
    disjoint = not backwards and all(order[k][0] >= addrs[order[k - 1][2] - 1] for k in range(1, len(order)))
    if disjoint:
        if order == seqs:
            return addrs, files, lines
        a, f, ln = array("Q"), array("q"), array("q")
        for _, i, j in order:
            a += addrs[i:j]
            f += files[i:j]
            ln += lines[i:j]
        return a, f, ln
    # rows sorted by address; at one address an end of sequence first, then rows in program order
    rows = sorted(range(len(addrs)), key=lambda i: (addrs[i], lines[i] >= 0 or files[i] >= 0, i))
    return (array("Q", [addrs[i] for i in rows]), array("q", [files[i] for i in rows]),
            array("q", [lines[i] for i in rows]))
