"""Where the functions no symbol names begin: the sorted FDE table of `.eh_frame_hdr`.

A stripped library's local functions have no symbol: Debian's libz (longest_match, deflate_slow), libcrypto's
assembly (sha256_block_data_order_avx2, the AES-GCM kernels), a stripped Python's static functions. A frame there
was named by its own address (`libz.so.1.2.13+0x3b4f`), so one hot function was as many frames as it had sampled
instructions: in a flame graph, dozens of slivers under its caller that no reader adds up (openssl's SHA-256 leaf:
~40 names for one function; perf script says `[unknown]` for all of them alike). Code that can be unwound has an
FDE, and `.eh_frame_hdr` lists them sorted by start, which the loader needs anyway: a frame no symbol covers is
named by the start of the FDE holding it, one name per function (symbolizer/core.py).

Only `.eh_frame_hdr`'s table is read, not the CFI programs: each FDE's length comes from its header, trusted only
where its own pc_begin (pcrel, 4 bytes: what every toolchain writes) agrees with the table, so no CIE is parsed.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right

from symbolizer.elffile import PT_GNU_EH_FRAME, PT_LOAD, ElfFile

_DATAREL_SDATA4 = 0x3B  # the table's encoding every linker writes
_FDE_HEAD = struct.Struct("<IIiI")  # length, CIE pointer, pc_begin (pcrel sdata4), pc_range


class FdeSpans:
    """The FDEs' [start, end) ranges, sorted by start."""

    __slots__ = ("ends", "starts")

    def __init__(self, starts: array, ends: array) -> None:
        self.starts, self.ends = starts, ends

    def __len__(self) -> int:
        return len(self.starts)

    def start_of(self, vaddr: int) -> int | None:
        """The start of the FDE covering `vaddr`, None between FDEs."""
        i = bisect_right(self.starts, vaddr) - 1
        if i < 0 or vaddr >= self.ends[i]:
            return None
        return self.starts[i]


def fde_spans(elf: ElfFile) -> FdeSpans | None:
    """The spans of `elf`'s .eh_frame FDEs, or None when it has no usable .eh_frame_hdr table."""
    hdr = elf.section(".eh_frame_hdr")
    if hdr is not None and hdr.size:
        data, hdr_addr = elf.data(hdr), hdr.addr
    else:
        seg = next((s for s in elf.segments if s.type == PT_GNU_EH_FRAME and s.filesz), None)
        if seg is None:
            return None
        data, hdr_addr = elf.segment_data(seg), seg.vaddr
    if len(data) < 12 or data[0] != 1 or data[2] != 0x03 or data[3] != _DATAREL_SDATA4:
        return None  # not version 1 with a udata4 count and a datarel|sdata4 table: none written here
    (count,) = struct.unpack_from("<I", data, 8)
    if 12 + 8 * count > len(data):
        return None
    pairs = array("i", data[12:12 + 8 * count])  # (start, FDE address) pairs relative to the header
    eh_addr = _eh_frame_addr(data, hdr_addr)
    eh = _eh_frame(elf, eh_addr)
    if eh is None:
        return None
    starts, ends = array("Q"), array("Q")
    for i in range(0, len(pairs), 2):
        start, off = hdr_addr + pairs[i], hdr_addr + pairs[i + 1] - eh_addr
        if not 0 <= off <= len(eh) - _FDE_HEAD.size:
            return None
        _, _, rel_begin, pc_range = _FDE_HEAD.unpack_from(eh, off)
        if eh_addr + off + 8 + rel_begin != start:
            continue  # another pc encoding: no length read without its CIE
        if starts and start < ends[-1]:
            continue  # overlapping FDEs: the first one's range stands
        starts.append(start)
        ends.append(start + pc_range)
    return FdeSpans(starts, ends)


def _eh_frame_addr(hdr: bytes, hdr_addr: int) -> int:
    """The .eh_frame address in the header (eh_frame_ptr, pcrel|sdata4 as linkers write it)."""
    enc = hdr[1]
    (value,) = struct.unpack_from("<i", hdr, 4)
    return hdr_addr + 4 + value if enc == 0x1B else value if enc == 0x03 else -1


def _eh_frame(elf: ElfFile, addr: int) -> bytes | None:
    sec = elf.section(".eh_frame")
    if sec is not None and sec.addr == addr:
        return elf.data(sec)
    for seg in elf.segments:
        if seg.type == PT_LOAD and seg.vaddr <= addr < seg.vaddr + seg.filesz:  # no section headers
            return elf.segment_data(seg)[addr - seg.vaddr:]
    return None
