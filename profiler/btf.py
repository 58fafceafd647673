"""Struct member offsets of the running kernel, read from its BTF (/sys/kernel/btf/vmlinux).

BCC compiles against whatever kernel headers are installed (Debian's 6.1 ones on a 6.18 kernel), so
a struct layout taken from a header can be wrong for the kernel that runs the program. The kernel's
own BTF describes its real layout; the few offsets the BPF programs need (task_struct.thread.fsbase:
a thread's TLS base, which glibc and musl make pthread_self()) are read from it here and handed to
the program as -D flags. Only the type section is walked, once, with struct.unpack_from: ~0.1 s for
the ~150k types of a distribution kernel, and not at all when no program needs an offset.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path

from podflame.errors import BinaryFormatError, SystemUnsupported

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_TYPE = struct.Struct("<III")  # name_off, info, size/type
_MEMBER = struct.Struct("<III")  # name_off, type, offset
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC_PROTO = 8, 9, 10, 11, 13
KIND_VAR, KIND_DATASEC, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 14, 15, 17, 18, 19
# bytes after the 12-byte common header: fixed, or per vlen item
_EXTRA_FIXED = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_EXTRA_PER_ITEM = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8, KIND_DATASEC: 12,
                   KIND_ENUM64: 12}
_QUALIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


class BtfError(BinaryFormatError):
    """The BTF blob is malformed, or lacks the type or member asked for."""


class Btf:
    """The types of one BTF blob, indexed by id (1-based) to their position; names resolved on demand."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BtfError("BTF blob shorter than its header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        types_at, strings_at = hdr_len + type_off, hdr_len + str_off
        if types_at + type_len > len(data) or strings_at + str_len > len(data):
            raise BtfError("BTF sections run past the end of the blob")
        self._data = data
        self._strings = (strings_at, strings_at + str_len)
        self._at: list[int] = [0]  # type id -> offset of its btf_type; id 0 is void
        unpack = _TYPE.unpack_from
        pos, end = types_at, types_at + type_len
        fixed, per_item = _EXTRA_FIXED, _EXTRA_PER_ITEM
        while pos < end:
            self._at.append(pos)
            info = unpack(data, pos)[1]
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += _TYPE.size + fixed.get(kind, 0) + per_item.get(kind, 0) * vlen
        if pos != end:
            raise BtfError("BTF type section does not end on a type boundary")

    @classmethod
    def from_file(cls, path: Path = VMLINUX_BTF) -> Btf:
        try:
            return cls(path.read_bytes())
        except OSError as e:
            raise SystemUnsupported(f"cannot read the kernel's BTF at {path} ({e.strerror}): the kernel needs "
                                    "CONFIG_DEBUG_INFO_BTF for podflame to know its struct layouts") from e

    def _name(self, off: int) -> str:
        start, end = self._strings
        at = start + off
        stop = self._data.find(b"\0", at, end)
        if stop < 0:
            raise BtfError(f"BTF name offset {off} is not a string")
        return self._data[at:stop].decode("ascii", "replace")

    def _type(self, type_id: int) -> tuple[int, int, int, int]:
        """(kind, vlen, size or referenced type, offset of the record)."""
        if not 0 < type_id < len(self._at):
            raise BtfError(f"BTF type id {type_id} out of range")
        at = self._at[type_id]
        _, info, size_or_type = _TYPE.unpack_from(self._data, at)
        return (info >> 24) & 0x1F, info & 0xFFFF, size_or_type, at

    def find_struct(self, name: str) -> int:
        """The id of the struct named `name` with members (not a forward declaration)."""
        for type_id in range(1, len(self._at)):
            at = self._at[type_id]
            name_off, info, _ = _TYPE.unpack_from(self._data, at)
            if (info >> 24) & 0x1F == KIND_STRUCT and info & 0xFFFF and self._name(name_off) == name:
                return type_id
        raise BtfError(f"no struct {name} in the kernel's BTF")

    def _resolve(self, type_id: int) -> int:
        for _ in range(32):  # typedef/const/volatile chains are short; a loop means corrupt BTF
            kind, _vlen, ref, _at = self._type(type_id)
            if kind not in _QUALIFIERS:
                return type_id
            type_id = ref
        raise BtfError("BTF qualifier chain too long")

    def member(self, struct_id: int, name: str) -> tuple[int, int]:
        """(byte offset, type id) of member `name`, looking into anonymous structs and unions."""
        kind, vlen, _size, at = self._type(self._resolve(struct_id))
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"BTF type {struct_id} is not a struct or union")
        kind_flag = _TYPE.unpack_from(self._data, at)[1] >> 31
        for i in range(vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(self._data, at + _TYPE.size + i * _MEMBER.size)
            bits = offset & 0xFFFFFF if kind_flag else offset
            member_name = self._name(name_off)
            if member_name == name:
                if bits % 8:
                    raise BtfError(f"member {name} is a bitfield")
                return bits // 8, member_type
            if not member_name:  # anonymous struct/union: its members belong to this one
                try:
                    inner, inner_type = self.member(member_type, name)
                except BtfError:
                    continue
                return bits // 8 + inner, inner_type
        raise BtfError(f"no member {name} in BTF type {struct_id}")

    def offset_of(self, struct_name: str, path: str) -> int:
        """Byte offset of a dotted member path, e.g. offset_of("task_struct", "thread.fsbase")."""
        type_id, total = self.find_struct(struct_name), 0
        for part in path.split("."):
            offset, type_id = self.member(type_id, part)
            total += offset
        return total


def packed_offsets(fields: Iterable[tuple[str, str]], path: Path = VMLINUX_BTF) -> bytes:
    """The running kernel's offsets of (struct, member path) `fields`, as the u64s of a BPF program's config
    struct: what the programs read kernel memory at, from the kernel's own layout (see the module doc)."""
    btf = Btf.from_file(path)
    offsets = [btf.offset_of(name, member) for name, member in fields]
    return struct.pack(f"<{len(offsets)}Q", *offsets)


def task_fsbase_offset(path: Path = VMLINUX_BTF) -> int:
    """Where a task's saved FS base (its TLS pointer, x86_64) is in the running kernel's task_struct."""
    return Btf.from_file(path).offset_of("task_struct", "thread.fsbase")


# bpf_find_vma came with Linux 5.17; a program that calls a helper its kernel lacks fails to load as a whole
FIND_VMA_RELEASE = (5, 17)


def kernel_has_find_vma(path: Path = VMLINUX_BTF, release: str | None = None) -> bool:
    """Whether the running kernel's BPF offers bpf_find_vma: its `enum bpf_func_id` names BPF_FUNC_find_vma in
    the BTF's strings; without BTF, by the kernel release (a distribution's backport is then missed, not
    misjudged: the walk only loses its first-library lookup)."""
    try:
        data = path.read_bytes()
    except OSError:
        found = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
        return found is not None and (int(found[1]), int(found[2])) >= FIND_VMA_RELEASE
    return b"\0BPF_FUNC_find_vma\0" in data


def mmap_lock_tracepoint_is_cheap(path: Path = VMLINUX_BTF) -> bool:
    """Whether the kernel's mmap_lock tracepoints pass the memcg's id (`trace_event_raw_mmap_lock.memcg_id`, Linux
    6.13+). Before, while any probe is attached, every mmap_lock release formats the memcg's path (cgroup_path)
    and the raw tracepoint's arguments are (mm, memcg_path, write): a probe there would tax every page fault of
    every process on the node, and read `write` from the wrong argument."""
    try:
        btf = Btf.from_file(path)
        btf.member(btf.find_struct("trace_event_raw_mmap_lock"), "memcg_id")
    except (BtfError, SystemUnsupported):
        return False
    return True
