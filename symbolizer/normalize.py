"""Runtime address -> ELF virtual address, the address symbol tables and DWARF speak.

A process sees a binary where the loader put it; symbols are at link-time addresses. The
mapping says which file offset the runtime address holds (`addr - start + offset`), and the
PT_LOAD segment holding that offset says where the linker placed it (`p_vaddr - p_offset`).
Going through the segment, not assuming `vaddr == offset`, keeps binaries right whose code
segment is linked away from its file offset (lld's layout, prelinked or -Ttext-segment libraries).
"""

from __future__ import annotations

from collections.abc import Sequence

from podflame.model import Mapping
from symbolizer.elf import ET_EXEC, LoadSegment

PAGE = 4096


def file_offset(address: int, mapping: Mapping) -> int:
    """Offset in the mapped file of the byte at `address`: process-independent, so a cache key."""
    return address - mapping.start + mapping.offset


def elf_address(address: int, mapping: Mapping, elf_type: str, segments: Sequence[LoadSegment]) -> int | None:
    """ELF virtual address of a runtime address, or None when no loadable segment holds it.

    ET_EXEC is loaded at its link addresses, so the address is already right. Everything else
    (ET_DYN: PIE executables and shared libraries) goes through the file offset.
    """
    if elf_type == ET_EXEC:
        return address
    off = file_offset(address, mapping)
    seg = _segment_for(off, segments)
    if seg is None:
        return None
    return off - seg.offset + seg.vaddr


def _segment_for(off: int, segments: Sequence[LoadSegment]) -> LoadSegment | None:
    best = None
    for seg in segments:
        if seg.offset <= off < seg.offset + seg.filesz:
            if seg.executable:
                return seg
            best = best or seg
    if best is not None:
        return best
    # The mapping starts on the page below an unaligned segment: accept the segment whose
    # page-aligned file range holds the offset.
    for seg in segments:
        if seg.offset - seg.offset % PAGE <= off < seg.offset + seg.filesz:
            return seg
    return None
