"""A small, fast reader for the parts of DWARF 2-5 a symbolizer needs: unit headers, abbreviations,
the attributes of code DIEs, range lists, and line programs.

pyelftools parses every DIE and line row through generic construct structures; on libpython3.11
that is ~0.5 s per big compile unit. Here DIEs are read straight from the section bytes with one
abbreviation-driven loop, only the attributes asked for are decoded (the rest are skipped by
form), and subtrees that cannot hold code (types, variables) are jumped over with DW_AT_sibling.
pyelftools still opens the ELF and hands over (decompressed) section bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

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


class FormatError(Exception):
    """DWARF this reader cannot decode."""


def uleb(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
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


@dataclass
class Sections:
    """The DWARF sections of one file, as bytes (b"" when absent)."""

    info: bytes = b""
    abbrev: bytes = b""
    line: bytes = b""
    str: bytes = b""
    line_str: bytes = b""
    str_offsets: bytes = b""
    addr: bytes = b""
    ranges: bytes = b""
    rnglists: bytes = b""
    aranges: bytes = b""
    little: bool = True


@dataclass
class Abbrev:
    tag: int
    children: bool
    specs: tuple[tuple[int, int, int], ...]  # (attribute, form, implicit const)


@dataclass
class Unit:
    offset: int
    end: int
    die_offset: int
    version: int
    address_size: int
    offset_size: int
    abbrevs: dict[int, Abbrev]
    # from the unit DIE
    str_offsets_base: int = 8
    addr_base: int = 8
    rnglists_base: int = 0
    base: int = 0  # DW_AT_low_pc of the unit: base of relative ranges
    top: dict[int, object] = field(default_factory=dict)


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
            ab = u.abbrevs[code]
            top, _ = self.attrs(u, p, ab, None)
            u.top = top
            # the bases first (other attributes' decoding needs them), raw as read
            u.str_offsets_base = int(top.get(AT_str_offsets_base, 8))  # type: ignore[arg-type]
            u.addr_base = int(top.get(AT_addr_base, top.get(AT_GNU_addr_base, 8)))  # type: ignore[arg-type]
            u.rnglists_base = int(top.get(AT_rnglists_base, top.get(AT_GNU_ranges_base, 0)))  # type: ignore[arg-type]
            top, _ = self.attrs(u, p, ab, None)  # again, now that indexed forms can resolve
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
        while pos < len(data):
            code, pos = uleb(data, pos)
            if code == 0:
                break
            tag, pos = uleb(data, pos)
            children = data[pos] == 1
            pos += 1
            specs = []
            while True:
                at, pos = uleb(data, pos)
                form, pos = uleb(data, pos)
                if at == 0 and form == 0:
                    break
                implicit = 0
                if form == 0x21:
                    implicit, pos = sleb(data, pos)
                specs.append((at, form, implicit))
            t[code] = Abbrev(tag, children, tuple(specs))
        self._abbrevs[offset] = t
        return t

    # -- DIEs --------------------------------------------------------------------------------

    def attrs(self, u: Unit, pos: int, ab: Abbrev,
              want: frozenset[int] | set[int] | None) -> tuple[dict[int, object], int]:
        """Decode the attributes of a DIE whose abbreviation is `ab` (read after its code, at `pos`).
        Only attributes in `want` are decoded (None: all); returns them and the DIE's end.
        Strings come back as str, references as absolute .debug_info offsets, high_pc as given
        (a length when its form is a constant: see `high_pc_is_length`)."""
        data = self.s.info
        out: dict[int, object] = {}
        osz, asz = u.offset_size, u.address_size
        little = self.s.little
        for at, form, implicit in ab.specs:
            if form == 0x16:  # indirect
                form, pos = uleb(data, pos)
            fixed = _FIXED.get(form)
            if fixed is not None and (want is not None and at not in want):
                pos += fixed
                continue
            if form == 0x0E or form == 0x1F or form == 0x17 or form == 0x10 or form == 0x1D or form == 0x1F21:
                # strp, line_strp, sec_offset, ref_addr (address-sized in DWARF 2), strp_sup/alt
                size = asz if (form == 0x10 and u.version == 2) else osz
                if want is None or at in want:
                    v = int.from_bytes(data[pos:pos + size], "little" if little else "big")
                    if form == 0x0E:
                        out[at] = self._str(self.s.str, v)
                    elif form == 0x1F:
                        out[at] = self._str(self.s.line_str, v)
                    elif form == 0x10:
                        out[at] = ("ref", v)
                    elif form == 0x17:
                        out[at] = v
                    else:
                        out[at] = None  # a string in a supplementary file we do not read
                pos += size
                continue
            if form == 0x18 or form == 0x09:  # exprloc, block
                n, pos = uleb(data, pos)
                pos += n
                continue
            if form == 0x0A or form == 0x03 or form == 0x04:  # block1/2/4
                size = {0x0A: 1, 0x03: 2, 0x04: 4}[form]
                pos += size + int.from_bytes(data[pos:pos + size], "little" if little else "big")
                continue
            if form == 0x08:  # inline string
                end = data.index(b"\0", pos)
                if want is None or at in want:
                    out[at] = data[pos:end].decode("utf-8", "surrogateescape")
                pos = end + 1
                continue
            if form == 0x01:  # addr
                if want is None or at in want:
                    out[at] = int.from_bytes(data[pos:pos + asz], "little" if little else "big")
                pos += asz
                continue
            if form == 0x0F or form == 0x15 or form == 0x1A or form == 0x1B or form == 0x22 or form == 0x23 \
                    or form == 0x1F01 or form == 0x1F02:
                v, pos = uleb(data, pos)
            elif form == 0x0D:
                v, pos = sleb(data, pos)
            elif form == 0x21:
                v = implicit
            elif form == 0x19:
                v = 1
            elif fixed is not None:
                v = int.from_bytes(data[pos:pos + fixed], "little" if little else "big")
                pos += fixed
            elif form == 0x1C or form == 0x24 or form == 0x1F20:  # ref_sup4/8, GNU_ref_alt: other file
                pos += 4 if form == 0x1C else (8 if form == 0x24 else osz)
                continue
            else:
                raise FormatError(f"unknown DW_FORM {form:#x}")
            if want is not None and at not in want:
                continue
            if form in _REF_CU_FORMS:
                out[at] = ("ref", u.offset + v)
            elif form in (0x1A, 0x25, 0x26, 0x27, 0x28, 0x1F02):  # strx
                out[at] = self._strx(u, v)
            elif form in _ADDR_FORMS:
                out[at] = self._addrx(u, v)
            elif form == 0x23:  # rnglistx
                out[at] = ("rnglistx", v)
            else:
                out[at] = v
        return out, pos

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

    def die_attrs(self, offset: int, want: set[int] | frozenset[int]) -> tuple[int, dict[int, object]]:
        """(tag, wanted attributes) of the DIE at an absolute .debug_info offset (any unit)."""
        u = self.unit_containing(offset)
        code, pos = uleb(self.s.info, offset)
        if code == 0:
            return 0, {}
        ab = u.abbrevs[code]
        return ab.tag, self.attrs(u, pos, ab, want)[0]

    # -- ranges ------------------------------------------------------------------------------

    def ranges(self, u: Unit, value: object) -> list[tuple[int, int]]:
        """[low, high) list of a DW_AT_ranges value (offset or ("rnglistx", i))."""
        if u.version >= 5:
            data = self.s.rnglists
            if isinstance(value, tuple):
                off = u.rnglists_base + self._u(data, u.rnglists_base + value[1] * u.offset_size, u.offset_size)
            else:
                off = int(value)  # type: ignore[arg-type]
            return self._rnglist(u, data, off)
        data = self.s.ranges
        pos = int(value)  # type: ignore[arg-type]
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
            if kind == 0:  # end_of_list
                break
            if kind == 1:  # base_addressx
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
            elif kind == 4:  # offset_pair
                a, pos = uleb(data, pos)
                b, pos = uleb(data, pos)
                out.append((base + a, base + b))
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

@dataclass
class LineTable:
    files: list[str]  # joined as binutils does; index = DWARF file number - first
    first: int  # 1 before DWARF 5, 0 from DWARF 5
    rows: list[tuple[int, int, int, int, int]]  # (address, order, seq no, file, line); order 0: end


def line_table(r: Reader, u: Unit, offset: int, comp_dir: str | None) -> LineTable:
    s = r.s
    data = s.line
    le = "little" if s.little else "big"

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
    asz = u.address_size
    if version >= 5:
        asz = data[pos]
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
        fake = Unit(0, 0, 0, 5, asz, osz, {}, u.str_offsets_base, u.addr_base)

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
        dirs = [d.get(1) if isinstance(d.get(1), str) else "" for d in ds]  # type: ignore[misc]
        fs, pos = entries(pos)
        raw_files = [(f.get(1) if isinstance(f.get(1), str) else "??", int(f.get(2, 0) or 0)) for f in fs]  # type: ignore[misc]
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
    rows = _run_program(data, program, end, asz, min_inst, line_base, line_range, opcode_base, std_lengths, le,
                        first, raw_files, dirs, version, comp_dir, files)
    return LineTable(files, first, rows)


def _line_form(r: Reader, u: Unit, data: bytes, pos: int, form: int, le: str) -> tuple[object, int]:
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


def _run_program(data: bytes, pos: int, end: int, asz: int, min_inst: int, line_base: int, line_range: int,
                 opcode_base: int, std_lengths: list[int], le: str, first: int, raw_files: list, dirs: list,
                 version: int, comp_dir: str | None, files: list[str]) -> list[tuple[int, int, int, int, int]]:
    rows: list[tuple[int, int, int, int, int]] = []
    append = rows.append
    address, file, line = 0, 1, 1
    seq = 0
    seq_start = len(rows)
    const_add = ((255 - opcode_base) // line_range) * min_inst if line_range else 0
    while pos < end:
        op = data[pos]
        pos += 1
        if op >= opcode_base:
            adj = op - opcode_base
            address += (adj // line_range) * min_inst
            line += line_base + adj % line_range
            append((address, 1, len(rows), file - first, line))
        elif op == 0:  # extended
            n, pos = uleb(data, pos)
            if n == 0:
                continue
            sub = data[pos]
            if sub == 1:  # end_sequence
                append((address, 0, len(rows), -1, -1))
                if rows[seq_start][0] == 0:  # a discarded function's tombstone: drop its sequence
                    del rows[seq_start:]
                seq += 1
                seq_start = len(rows)
                address, file, line = 0, 1, 1
            elif sub == 2:  # set_address
                address = int.from_bytes(data[pos + 1:pos + 1 + (n - 1)], le)
            elif sub == 3 and version < 5:  # define_file
                name, p = cstr(data, pos + 1)
                di, p = uleb(data, p)
                raw_files.append((name.decode("utf-8", "surrogateescape"), di))
                files.append(_join(raw_files[-1][0], di, dirs, version, comp_dir))
            pos += n
        elif op == 1:  # copy
            append((address, 1, len(rows), file - first, line))
        elif op == 2:  # advance_pc
            v, pos = uleb(data, pos)
            address += v * min_inst
        elif op == 3:  # advance_line
            v, pos = sleb(data, pos)
            line += v
        elif op == 4:  # set_file
            file, pos = uleb(data, pos)
        elif op == 8:  # const_add_pc
            address += const_add
        elif op == 9:  # fixed_advance_pc
            address += int.from_bytes(data[pos:pos + 2], le)
            pos += 2
        elif op in (6, 7, 10, 11):  # negate_stmt, basic_block, prologue_end, epilogue_begin
            pass
        else:  # set_column, set_isa and unknown standard opcodes: skip their ULEB operands
            for _ in range(std_lengths[op - 1] if op - 1 < len(std_lengths) else 0):
                _, pos = uleb(data, pos)
    return rows
