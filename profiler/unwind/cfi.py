"""DWARF call frame information: CIEs and FDEs of .eh_frame / .debug_frame, and their rule rows.

We parse CFI ourselves because the agent builds a table for every new binary it sees on a node
and must stay under 1% of a core: a generic object-per-instruction decoder costs seconds per big
binary. Here an FDE is a few integers and a slice, a CFA program runs in one tight loop, and only
the registers the x86_64 unwinder needs (CFA, rbp, return address) are tracked.

Everything is bounded by the section: every read is checked against the entry it belongs to,
the remember_state stack and expression blocks are capped, and a malformed entry raises
`CfiFormatError` (a `BinaryFormatError`) instead of looping or allocating without bound.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from podflame.errors import BinaryFormatError

# Register rules: (kind, value). value is an offset (OFFSET, VAL_OFFSET), a register (REGISTER)
# or the expression's bytes (EXPRESSION, VAL_EXPRESSION).
SAME, UNDEFINED, OFFSET, VAL_OFFSET, REGISTER, EXPRESSION, VAL_EXPRESSION = range(7)
RuleT = tuple[int, int | bytes]
SAME_RULE: RuleT = (SAME, 0)
UNDEFINED_RULE: RuleT = (UNDEFINED, 0)

# One row's state: (cfa_register, cfa_offset, cfa_expression or None, rbp rule, return address rule).
State = tuple[int, int, bytes | None, RuleT, RuleT]

RBP, RSP = 6, 7  # DWARF register numbers on x86_64
MAX_STATE_STACK = 64  # remember_state depth; real code nests 1-2
MAX_ROWS_PER_FDE = 1 << 20

DW_EH_PE_omit = 0xFF
DW_EH_PE_indirect = 0x80


class CfiFormatError(BinaryFormatError):
    """.eh_frame, .eh_frame_hdr or .debug_frame bytes that do not parse as DWARF CFI."""


@dataclass(frozen=True, slots=True)
class Cie:
    offset: int
    version: int
    augmentation: str
    code_align: int
    data_align: int
    ra_reg: int
    fde_encoding: int  # pointer encoding of pc_begin / pc_range / set_loc ('R'); absptr when absent
    lsda_encoding: int
    signal: bool  # 'S': a signal trampoline's frame
    has_aug_data: bool  # 'z': FDEs carry an augmentation data length
    address_size: int
    initial: bytes  # initial instructions
    initial_state: State


@dataclass(frozen=True, slots=True)
class Fde:
    offset: int
    cie: Cie
    pc_begin: int
    pc_end: int
    instructions: bytes


# -- primitive readers ----------------------------------------------------------------------------

def _uleb(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise CfiFormatError("LEB128 runs past its entry")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CfiFormatError("LEB128 longer than 64 bits")


def _sleb(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value, after = _uleb(data, pos, end)
    if data[after - 1] & 0x40:  # the last byte's top payload bit is the sign
        value -= 1 << (7 * (after - pos))
    return value, after


_FIXED = {0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}


class PointerReader:
    """Decodes DW_EH_PE-encoded pointers of one section (pcrel against the section's address)."""

    def __init__(self, data: bytes, section_addr: int, *, ptr_size: int = 8, datarel_base: int | None = None,
                 deref: Callable[[int], int] | None = None) -> None:
        self.data = data
        self.section_addr = section_addr
        self.ptr_size = ptr_size
        self.datarel_base = datarel_base
        self.deref = deref

    def read(self, enc: int, pos: int, end: int) -> tuple[int, int]:
        if enc == DW_EH_PE_omit:
            return 0, pos
        data = self.data
        fmt = enc & 0x0F
        app = enc & 0x70
        start = pos
        if app == 0x50:  # aligned
            pos = (pos + self.ptr_size - 1) // self.ptr_size * self.ptr_size
            start = pos
        if fmt == 0x00:
            f = "<Q" if self.ptr_size == 8 else "<I"
            if pos + self.ptr_size > end:
                raise CfiFormatError("pointer runs past its entry")
            val = struct.unpack_from(f, data, pos)[0]
            pos += self.ptr_size
        elif fmt == 0x01:
            val, pos = _uleb(data, pos, end)
        elif fmt == 0x09:
            val, pos = _sleb(data, pos, end)
        elif fmt in _FIXED:
            f = _FIXED[fmt]
            size = struct.calcsize(f)
            if pos + size > end:
                raise CfiFormatError("pointer runs past its entry")
            val = struct.unpack_from(f, data, pos)[0]
            pos += size
        else:
            raise CfiFormatError(f"unknown pointer encoding {enc:#x}")
        if app == 0x10:
            val += self.section_addr + start
        elif app == 0x30:
            if self.datarel_base is None:
                raise CfiFormatError("datarel pointer without a data base")
            val += self.datarel_base
        elif app not in (0x00, 0x50):
            raise CfiFormatError(f"unsupported pointer application {enc:#x}")
        val &= (1 << 64) - 1
        if enc & DW_EH_PE_indirect:
            if self.deref is None:
                raise CfiFormatError("indirect pointer where none can be read")
            val = self.deref(val)
        return val, pos


# -- CFA programs ---------------------------------------------------------------------------------

_ADVANCE = {0x02: (1, "<B"), 0x03: (2, "<H"), 0x04: (4, "<I"), 0x1D: (8, "<Q")}


def _restored(reg: int, init: State, ra_reg: int) -> RuleT:
    """DW_CFA_restore: the register's rule after the CIE's initial instructions."""
    return init[3] if reg == RBP else init[4] if reg == ra_reg else SAME_RULE


def run_program(code: bytes, cie: Cie, start: State, *, pointers: PointerReader | None = None,
                pc_begin: int = 0, code_offset: int = 0) -> tuple[list[tuple[int, State]], bool]:
    """Run a CFA program from `start`; (rows as (pc offset from pc_begin, state), used set_loc).

    Rows are in program order; a later change at the same location replaces that location's row.
    `code_offset` is where `code` sits in the pointer reader's section (for pcrel set_loc).
    """
    cfa_reg, cfa_off, cfa_expr, rbp, ra = start
    init = cie.initial_state
    ra_reg = cie.ra_reg
    caf = cie.code_align
    daf = cie.data_align
    rows: list[tuple[int, State]] = []
    stack: list[State] = []
    reg, rule = 0, SAME_RULE
    loc = 0
    used_set_loc = False
    pos = 0
    n = len(code)
    while pos < n:
        op = code[pos]
        pos += 1
        hi = op & 0xC0
        if hi:
            low = op & 0x3F
            if hi == 0x40:  # advance_loc
                new = loc + low * caf
            elif hi == 0x80:  # offset
                b = code[pos] if pos < n else 0x80
                if b < 0x80:
                    pos += 1
                    off = b
                else:
                    off, pos = _uleb(code, pos, n)
                reg, rule, new = low, (OFFSET, off * daf), -1
            else:  # restore
                reg, rule, new = low, _restored(low, init, ra_reg), -1
        elif op == 0x00:  # nop
            continue
        elif op == 0x0E:  # def_cfa_offset
            b = code[pos] if pos < n else 0x80
            if b < 0x80:
                cfa_off = b
                pos += 1
            else:
                cfa_off, pos = _uleb(code, pos, n)
            continue
        elif op == 0x0C:  # def_cfa
            cfa_reg, pos = _uleb(code, pos, n)
            cfa_off, pos = _uleb(code, pos, n)
            cfa_expr = None
            continue
        elif op == 0x0D:  # def_cfa_register
            cfa_reg, pos = _uleb(code, pos, n)
            cfa_expr = None
            continue
        elif op in _ADVANCE:  # advance_loc1/2/4, MIPS_advance_loc8
            size, fmt = _ADVANCE[op]
            if pos + size > n:
                raise CfiFormatError("advance_loc runs past its FDE")
            new = loc + struct.unpack_from(fmt, code, pos)[0] * caf
            pos += size
        elif op == 0x01:  # set_loc
            if pointers is None:
                raise CfiFormatError("set_loc in an initial program")
            # the reader's positions are section offsets: read from the section itself
            addr, end_pos = pointers.read(cie.fde_encoding, code_offset + pos, code_offset + n)
            pos = end_pos - code_offset
            new = addr - pc_begin
            used_set_loc = True
            if new < loc:
                raise CfiFormatError("set_loc moves backwards")
        elif op in (0x05, 0x11, 0x14, 0x15, 0x2F):  # offset_extended(_sf), val_offset(_sf), GNU_negative_offset
            reg, pos = _uleb(code, pos, n)
            if op in (0x11, 0x15):
                off, pos = _sleb(code, pos, n)
            else:
                off, pos = _uleb(code, pos, n)
            off *= daf
            if op == 0x2F:
                off = -off
            rule, new = (VAL_OFFSET if op in (0x14, 0x15) else OFFSET, off), -1
        elif op in (0x06, 0x07, 0x08):  # restore_extended, undefined, same_value
            reg, pos = _uleb(code, pos, n)
            rule = _restored(reg, init, ra_reg) if op == 0x06 else UNDEFINED_RULE if op == 0x07 else SAME_RULE
            new = -1
        elif op == 0x09:  # register
            reg, pos = _uleb(code, pos, n)
            other, pos = _uleb(code, pos, n)
            rule, new = (REGISTER, other), -1
        elif op == 0x0A:  # remember_state
            if len(stack) >= MAX_STATE_STACK:
                raise CfiFormatError("remember_state nests too deep")
            stack.append((cfa_reg, cfa_off, cfa_expr, rbp, ra))
            continue
        elif op == 0x0B:  # restore_state: the CFA is part of the saved row, as GCC's unwinder restores it
            if not stack:
                raise CfiFormatError("restore_state without remember_state")
            cfa_reg, cfa_off, cfa_expr, rbp, ra = stack.pop()
            continue
        elif op == 0x0F:  # def_cfa_expression
            size, pos = _uleb(code, pos, n)
            if pos + size > n:
                raise CfiFormatError("expression runs past its FDE")
            cfa_expr = code[pos:pos + size]
            pos += size
            continue
        elif op in (0x10, 0x16):  # expression, val_expression
            reg, pos = _uleb(code, pos, n)
            size, pos = _uleb(code, pos, n)
            if pos + size > n:
                raise CfiFormatError("expression runs past its FDE")
            rule, new = (EXPRESSION if op == 0x10 else VAL_EXPRESSION, code[pos:pos + size]), -1
            pos += size
        elif op == 0x12:  # def_cfa_sf
            cfa_reg, pos = _uleb(code, pos, n)
            off, pos = _sleb(code, pos, n)
            cfa_off = off * daf
            cfa_expr = None
            continue
        elif op == 0x13:  # def_cfa_offset_sf
            off, pos = _sleb(code, pos, n)
            cfa_off = off * daf
            continue
        elif op == 0x2E:  # GNU_args_size: only matters for landing pads
            _, pos = _uleb(code, pos, n)
            continue
        elif op == 0x2D:  # GNU_window_save (SPARC) / AArch64 negate_ra_state: no x86_64 meaning
            continue
        else:
            raise CfiFormatError(f"unknown CFA instruction {op:#x}")
        if new < 0:  # a register rule: only rbp and the return address matter to the table
            if reg == RBP:
                rbp = rule
            elif reg == ra_reg:
                ra = rule
            continue
        # an advance: the row so far holds from loc up to new
        if new != loc:
            if rows and rows[-1][0] == loc:
                rows[-1] = (loc, (cfa_reg, cfa_off, cfa_expr, rbp, ra))
            else:
                if len(rows) >= MAX_ROWS_PER_FDE:
                    raise CfiFormatError("too many rows in one FDE")
                rows.append((loc, (cfa_reg, cfa_off, cfa_expr, rbp, ra)))
            loc = new
    if rows and rows[-1][0] == loc:
        rows[-1] = (loc, (cfa_reg, cfa_off, cfa_expr, rbp, ra))
    else:
        rows.append((loc, (cfa_reg, cfa_off, cfa_expr, rbp, ra)))
    return rows, used_set_loc


# -- sections -------------------------------------------------------------------------------------

_START_STATE: State = (RSP, 0, None, SAME_RULE, UNDEFINED_RULE)
_FDE_HEAD = struct.Struct("<IIii")


class CfiSection:
    """The CIEs and FDEs of one .eh_frame (`eh=True`) or .debug_frame section."""

    def __init__(self, data: bytes, addr: int, *, eh: bool, ptr_size: int = 8,
                 deref: Callable[[int], int] | None = None) -> None:
        self.data = data
        self.addr = addr
        self.eh = eh
        self.pointers = PointerReader(data, addr, ptr_size=ptr_size, deref=deref)
        self.ptr_size = ptr_size
        self._cies: dict[int, Cie] = {}

    def _header(self, off: int) -> tuple[int, int, int, bool]:
        """(entry end, position after the id field, id, 64-bit) of the entry at `off`; end == pos: a terminator."""
        data = self.data
        if off + 4 > len(data):
            raise CfiFormatError(f"entry header at {off:#x} runs past the section")
        length = struct.unpack_from("<I", data, off)[0]
        pos = off + 4
        wide = False
        if length == 0xFFFFFFFF:
            if pos + 8 > len(data):
                raise CfiFormatError(f"entry header at {off:#x} runs past the section")
            length = struct.unpack_from("<Q", data, pos)[0]
            pos += 8
            wide = True
        end = pos + length
        if length == 0:
            return end, pos, 0, wide
        id_size = 8 if wide else 4
        if end > len(data) or length < id_size:
            raise CfiFormatError(f"entry at {off:#x} has a bad length {length}")
        cid = struct.unpack_from("<Q" if wide else "<I", data, pos)[0]
        return end, pos + id_size, cid, wide

    def _is_cie(self, cid: int, wide: bool) -> bool:
        if self.eh:
            return cid == 0
        return cid == (0xFFFFFFFFFFFFFFFF if wide else 0xFFFFFFFF)

    def cie(self, off: int) -> Cie:
        got = self._cies.get(off)
        if got is not None:
            return got
        if not 0 <= off < len(self.data):
            raise CfiFormatError(f"CIE pointer {off:#x} outside the section")
        end, pos, cid, wide = self._header(off)
        if end == pos or not self._is_cie(cid, wide):
            raise CfiFormatError(f"FDE points at {off:#x}, which is not a CIE")
        data = self.data
        if pos >= end:
            raise CfiFormatError(f"CIE at {off:#x} is truncated")
        version = data[pos]
        pos += 1
        if version not in (1, 3, 4):
            raise CfiFormatError(f"CIE at {off:#x} has version {version}")
        zero = data.find(b"\0", pos, end)
        if zero < 0:
            raise CfiFormatError(f"CIE at {off:#x}: unterminated augmentation")
        aug = data[pos:zero].decode("ascii", "replace")
        pos = zero + 1
        address_size = self.ptr_size
        if version >= 4:
            if pos + 2 > end:
                raise CfiFormatError(f"CIE at {off:#x} is truncated")
            address_size, seg_size = data[pos], data[pos + 1]
            pos += 2
            if address_size not in (4, 8) or seg_size != 0:
                raise CfiFormatError(f"CIE at {off:#x}: address size {address_size}, segment size {seg_size}")
        if aug.startswith("eh"):  # GCC 2.x: a pointer to exception data
            pos += self.ptr_size
        code_align, pos = _uleb(data, pos, end)
        data_align, pos = _sleb(data, pos, end)
        if version == 1:
            if pos >= end:
                raise CfiFormatError(f"CIE at {off:#x} is truncated")
            ra_reg = data[pos]
            pos += 1
        else:
            ra_reg, pos = _uleb(data, pos, end)
        fde_enc = 0x00 if self.ptr_size == 8 else 0x03
        lsda_enc = DW_EH_PE_omit
        signal = False
        has_z = aug.startswith("z")
        if has_z:
            aug_len, pos = _uleb(data, pos, end)
            aug_end = pos + aug_len
            if aug_end > end:
                raise CfiFormatError(f"CIE at {off:#x}: augmentation data runs past the entry")
            for ch in aug[1:]:
                if ch == "R":
                    fde_enc = data[pos] if pos < aug_end else -1
                    pos += 1
                elif ch == "L":
                    lsda_enc = data[pos] if pos < aug_end else -1
                    pos += 1
                elif ch == "P":
                    enc = data[pos] if pos < aug_end else -1
                    if enc < 0:
                        raise CfiFormatError(f"CIE at {off:#x}: truncated personality")
                    # read (and bound-check) the personality pointer; never dereferenced: we do not need it
                    _, pos = self.pointers.read(enc & ~DW_EH_PE_indirect, pos + 1, aug_end)
                elif ch == "S":
                    signal = True
                elif ch in "BG":  # AArch64 BTI / MTE tagged frames: no data
                    continue
                else:
                    break  # unknown letter: the rest of the augmentation data is skipped by its length
                if fde_enc < 0 or lsda_enc < 0 or pos > aug_end:
                    raise CfiFormatError(f"CIE at {off:#x}: augmentation data runs past its length")
            pos = aug_end
        elif aug not in ("", "eh"):
            raise CfiFormatError(f"CIE at {off:#x}: augmentation {aug!r} without 'z' cannot be skipped")
        initial = data[pos:end]
        cie = Cie(off, version, aug, code_align, data_align, ra_reg, fde_enc, lsda_enc, signal, has_z,
                  address_size, initial, _START_STATE)
        rows, _ = run_program(initial, cie, _START_STATE)
        if len(rows) != 1 or rows[0][0] != 0:
            raise CfiFormatError(f"CIE at {off:#x}: initial instructions advance the location")
        state = rows[0][1]
        cie = Cie(off, version, aug, code_align, data_align, ra_reg, fde_enc, lsda_enc, signal, has_z,
                  address_size, initial, state)
        self._cies[off] = cie
        return cie

    def fde_at(self, off: int) -> tuple[int, Cie, int, int, int, int] | None:
        """(entry end, CIE, pc_begin, pc_end, instructions start, instructions end) of the FDE at
        `off`; None for a CIE or the terminator."""
        data = self.data
        if self.eh and off >= 0 and off + 16 <= len(data):
            # the shape every toolchain writes (32-bit length, pcrel|sdata4 pc, empty augmentation
            # data), decoded in one unpack: most of a build's time is spent on FDE headers
            length, cid, rel_begin, pc_range = _FDE_HEAD.unpack_from(data, off)
            cie = self._cies.get(off + 4 - cid) if cid else None
            end = off + 4 + length
            if (cie is not None and cie.fde_encoding == 0x1B and 12 <= length < 0xFFFFFFF0 and end <= len(data)
                    and (not cie.has_aug_data or (end > off + 16 and data[off + 16] == 0))):
                begin = (self.addr + off + 8 + rel_begin) & 0xFFFFFFFFFFFFFFFF
                return end, cie, begin, begin + pc_range, off + 17 if cie.has_aug_data else off + 16, end
        end, pos, cid, wide = self._header(off)
        if end == pos:
            return None
        if self._is_cie(cid, wide):
            return None
        cie_off = (pos - (8 if wide else 4)) - cid if self.eh else cid
        cie = self.cie(cie_off)
        if self.eh:
            enc = cie.fde_encoding
            begin, pos = self.pointers.read(enc, pos, end)
            length, pos = self.pointers.read(enc & 0x0F, pos, end)
        else:
            size = cie.address_size
            if pos + 2 * size > end:
                raise CfiFormatError(f"FDE at {off:#x} is truncated")
            f = "<Q" if size == 8 else "<I"
            begin, length = struct.unpack_from(f, self.data, pos)[0], struct.unpack_from(f, self.data, pos + size)[0]
            pos += 2 * size
        if cie.has_aug_data:
            aug_len, pos = _uleb(self.data, pos, end)
            pos += aug_len
            if pos > end:
                raise CfiFormatError(f"FDE at {off:#x}: augmentation data runs past the entry")
        return end, cie, begin, begin + length, pos, end

    def entries(self) -> Iterator[tuple[int, Cie, int, int, int, int]]:
        """Every FDE in section order, as `fde_at` returns them (with the FDE's offset first)."""
        off = 0
        n = len(self.data)
        while off + 4 <= n:
            end, pos, _, _ = self._header(off)
            if end == pos and self.eh:
                break  # a zero length ends .eh_frame
            got = self.fde_at(off)
            if got is not None:
                yield (off, *got[1:])
            off = end if end > off else n

    def fde(self, off: int) -> Fde:
        got = self.fde_at(off)
        if got is None:
            raise CfiFormatError(f"no FDE at {off:#x}")
        _, cie, begin, end, istart, iend = got
        return Fde(off, cie, begin, end, self.data[istart:iend])

    def rows(self, fde: Fde) -> list[tuple[int, State]]:
        """The rule rows of one FDE as (pc, state), clipped to its range."""
        istart = len(self.data)  # set_loc reads need the instructions' place in the section
        got = self.fde_at(fde.offset)
        if got is not None:
            istart = got[4]
        rows, _ = run_program(fde.instructions, fde.cie, fde.cie.initial_state, pointers=self.pointers,
                              pc_begin=fde.pc_begin, code_offset=istart)
        length = fde.pc_end - fde.pc_begin
        return [(fde.pc_begin + d, s) for d, s in rows if d == 0 or d < length]


# .eh_frame_hdr's sorted (initial pc, FDE address) columns, int64. No numpy: the agent builds small tables itself
# and never imports it (tables6)
HdrTable = tuple["array[int]", "array[int]"]


def parse_eh_frame_hdr(data: bytes, addr: int, ptr_size: int = 8) -> tuple[int, HdrTable | None]:
    """(.eh_frame address, its sorted FDE table or None when it has none) from .eh_frame_hdr."""
    if len(data) < 4 or data[0] != 1:
        raise CfiFormatError(".eh_frame_hdr: unknown version or truncated")
    ptr_enc, count_enc, table_enc = data[1], data[2], data[3]
    reader = PointerReader(data, addr, ptr_size=ptr_size, datarel_base=addr)
    n = len(data)
    eh_frame_ptr, pos = reader.read(ptr_enc, 4, n)
    if count_enc == DW_EH_PE_omit or table_enc == DW_EH_PE_omit:
        return eh_frame_ptr, None
    count, pos = reader.read(count_enc, pos, n)
    if count > n:  # every entry takes at least two bytes
        raise CfiFormatError(f".eh_frame_hdr: {count} entries do not fit in {n} bytes")
    if table_enc == 0x3B:  # datarel|sdata4: what every linker writes; decode it in one go
        if pos + 8 * count > n:
            raise CfiFormatError(f".eh_frame_hdr: {count} entries do not fit in {n} bytes")
        pairs = array("i", data[pos:pos + 8 * count])  # (loc, fde) pairs; native order: little endian on x86_64
        return eh_frame_ptr, (array("q", [v + addr for v in pairs[0::2]]),
                              array("q", [v + addr for v in pairs[1::2]]))
    locs, fdes = [], []
    for _ in range(count):
        if pos >= n:
            raise CfiFormatError(f".eh_frame_hdr: {count} entries do not fit in {n} bytes")
        loc, pos = reader.read(table_enc, pos, n)
        fde, pos = reader.read(table_enc, pos, n)
        locs.append(loc)
        fdes.append(fde)
    return eh_frame_ptr, (array("q", [v - (1 << 64) if v >> 63 > 0 else v for v in locs]),
                          array("q", [v - (1 << 64) if v >> 63 > 0 else v for v in fdes]))
