"""The sampler's BPF program as bytecode: BCC compiles it once, the bpf() syscall loads it after that.

BCC compiles C with clang: ~0.3 s of CPU and ~130 MB of peak RSS, in a child process
(profiler/bpfcompile.py), the largest cost of an agent start. The bytecode depends only on the
source, its -D flags, BCC, the kernel headers and the kernel it was made for, so after a compile we
keep a `ProgramImage` (the instructions, which of them refer to which map, each map's shape) in a
root-only cache directory keyed by all of those. A later start creates the maps and loads the
instructions with bpf() itself and does not compile at all. The kernel's verifier checks a cached
image like any other program; a missing, stale, unsafe or rejected image only means compiling again.

Whichever way the image came, everything the sampler does at run time (maps, the perf events, the
ring buffer) goes through `LoadedProgram` here: one code path, tested and shipped.
"""

from __future__ import annotations

import ctypes as ct
import errno
import functools
import hashlib
import json
import logging
import mmap
import os
import platform
import select
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("podflame.bpfprog")

FORMAT = 4  # of the cached image; part of its key (2: programs reached by tail calls; 3: raw tracepoint programs;
# 4: callback subprograms, loaded with BTF func_info)
DEFAULT_CACHE_DIR = Path("/var/cache/podflame/bpf")
MAX_IMAGE_BYTES = 4 << 20
MAX_INSNS = 1_000_000
MAX_CACHED_IMAGES = 16

# bpf() commands, map and program types (include/uapi/linux/bpf.h)
_MAP_CREATE, _MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM, _MAP_DELETE_ELEM, _PROG_LOAD = 0, 1, 2, 3, 5
_OBJ_GET_INFO_BY_FD, _RAW_TRACEPOINT_OPEN, _BTF_LOAD, _MAP_LOOKUP_AND_DELETE_BATCH, _MAP_UPDATE_BATCH = \
    15, 17, 18, 25, 26
MAP_HASH, MAP_ARRAY, MAP_PROG_ARRAY, MAP_PERCPU_ARRAY, MAP_LRU_HASH, MAP_ARRAY_OF_MAPS, MAP_RINGBUF = \
    1, 2, 3, 6, 9, 12, 27
_KNOWN_MAP_TYPES = {MAP_HASH, MAP_ARRAY, MAP_PROG_ARRAY, MAP_PERCPU_ARRAY, MAP_LRU_HASH, MAP_ARRAY_OF_MAPS,
                    MAP_RINGBUF}
PROG_TYPE_PERF_EVENT, PROG_TYPE_RAW_TRACEPOINT = 7, 17
LD_IMM64, PSEUDO_MAP_FD, PSEUDO_FUNC = 0x18, 1, 4  # a 16-byte load of a 64-bit constant; its src: a map fd, a
# subprogram (imm: its first instruction, relative to the next one)
# A helper's callback (bpf_find_vma) in the C source is this constant (bpf/native_unwind.bpf.h FIND_VMA_STORE):
# BCC 0.26 compiles a callback's address to 0 and leaves its code out of the program, so `link_callbacks` appends
# the one callback the sampler needs, written here, and points the load at it.
FIND_VMA_STORE_MARK = 0x7066766D615F6362
# long store(task, vma, void *out) { *(u64 *)out = vma; return 0; }: the VMA goes to the caller, which reads it with
# probe reads (still valid: the sampling interrupt is an RCU read-side section, and VMAs are freed after one)
_STORE_VMA_CALLBACK = bytes.fromhex("7b23000000000000" "b700000000000000" "9500000000000000")
# perf_event_open (include/uapi/linux/perf_event.h)
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK = 1, 0
_PERF_FLAG_FD_CLOEXEC, _PERF_ATTR_DISABLED, _PERF_ATTR_FREQ = 8, 1 << 0, 1 << 10
_PERF_EVENT_IOC_ENABLE, _PERF_EVENT_IOC_DISABLE, _PERF_EVENT_IOC_SET_BPF = 0x2400, 0x2401, 0x40042408
_RINGBUF_BUSY, _RINGBUF_DISCARD, _RINGBUF_HDR = 1 << 31, 1 << 30, 8

_SYSCALLS = {"x86_64": (321, 298), "aarch64": (280, 241)}  # (bpf, perf_event_open)
_u32, _u64 = ct.c_uint32, ct.c_uint64


class _MapCreate(ct.Structure):
    _fields_ = [("map_type", _u32), ("key_size", _u32), ("value_size", _u32), ("max_entries", _u32),
                ("map_flags", _u32), ("inner_map_fd", _u32), ("numa_node", _u32), ("map_name", ct.c_char * 16)]


class _Elem(ct.Structure):
    _fields_ = [("map_fd", _u32), ("key", _u64), ("value", _u64), ("flags", _u64)]


class _Batch(ct.Structure):
    _fields_ = [("in_batch", _u64), ("out_batch", _u64), ("keys", _u64), ("values", _u64), ("count", _u32),
                ("map_fd", _u32), ("elem_flags", _u64), ("flags", _u64)]


class _ProgLoad(ct.Structure):
    _fields_ = [("prog_type", _u32), ("insn_cnt", _u32), ("insns", _u64), ("license", _u64), ("log_level", _u32),
                ("log_size", _u32), ("log_buf", _u64), ("kern_version", _u32), ("prog_flags", _u32),
                ("prog_name", ct.c_char * 16), ("prog_ifindex", _u32), ("expected_attach_type", _u32),
                ("prog_btf_fd", _u32), ("func_info_rec_size", _u32), ("func_info", _u64), ("func_info_cnt", _u32)]


class _BtfLoad(ct.Structure):
    _fields_ = [("btf", _u64), ("btf_log_buf", _u64), ("btf_size", _u32), ("btf_log_size", _u32),
                ("btf_log_level", _u32)]


class _RawTracepointOpen(ct.Structure):
    _fields_ = [("name", _u64), ("prog_fd", _u32)]


class _ObjInfo(ct.Structure):
    _fields_ = [("bpf_fd", _u32), ("info_len", _u32), ("info", _u64)]


class _MapInfo(ct.Structure):
    _fields_ = [("type", _u32), ("id", _u32), ("key_size", _u32), ("value_size", _u32), ("max_entries", _u32),
                ("map_flags", _u32), ("name", ct.c_char * 16)]


class _PerfEventAttr(ct.Structure):  # PERF_ATTR_SIZE_VER1: all a software sampling event needs
    _fields_ = [("type", _u32), ("size", _u32), ("config", _u64), ("sample_freq", _u64), ("sample_type", _u64),
                ("read_format", _u64), ("flags", _u64), ("wakeup_events", _u32), ("bp_type", _u32),
                ("config1", _u64), ("config2", _u64)]


_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long
_libc.ioctl.argtypes = [ct.c_int, ct.c_ulong, ct.c_ulong]


@functools.cache
def _numbers() -> tuple[int, int]:
    try:
        return _SYSCALLS[platform.machine()]
    except KeyError:
        raise OSError(errno.ENOSYS, f"no bpf() syscall number known for {platform.machine()}") from None


def bpf(cmd: int, attr: ct.Structure) -> int:
    """The bpf() syscall; raises OSError with the errno."""
    r = _libc.syscall(ct.c_long(_numbers()[0]), ct.c_int(cmd), ct.byref(attr), ct.c_uint(ct.sizeof(attr)))
    if r < 0:
        e = ct.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def _addr(buf: ct.Array | ct.Structure | ct._SimpleCData | None) -> int:
    return ct.addressof(buf) if buf is not None else 0


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    inner: str | None = None  # ARRAY_OF_MAPS: the map whose shape its values have


@dataclass(frozen=True, slots=True)
class TailProgram:
    """A program only reached by bpf_tail_call: loaded before the entry program, its fd stored at
    `index` of the PROG_ARRAY map `prog_array` (the program may tail-call itself through it)."""

    name: str
    insns: bytes
    relocations: tuple[tuple[int, str], ...]
    prog_array: str
    index: int


@dataclass(frozen=True, slots=True)
class TracepointProgram:
    """A raw tracepoint program sharing the entry program's maps and license (by name: attach by the
    tracepoint's name needs no tracefs mounted)."""

    name: str
    insns: bytes
    relocations: tuple[tuple[int, str], ...]
    tracepoint: str


@dataclass(frozen=True, slots=True)
class ProgramImage:
    """A compiled program: instructions with the map fds as placeholders, and the maps to create.

    `tail_programs` share the entry program's maps, type and license."""

    name: str
    prog_type: int
    license: str
    kern_version: int
    insns: bytes
    relocations: tuple[tuple[int, str], ...]  # (instruction index of an ld_imm64, map name)
    maps: tuple[MapSpec, ...]
    tail_programs: tuple[TailProgram, ...] = ()
    tracepoint_programs: tuple[TracepointProgram, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "name": self.name, "prog_type": self.prog_type, "license": self.license,
                           "kern_version": self.kern_version, "insns": self.insns.hex(),
                           "relocations": [list(r) for r in self.relocations],
                           "maps": [[m.name, m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.inner]
                                    for m in self.maps],
                           "tail_programs": [[t.name, t.insns.hex(), [list(r) for r in t.relocations], t.prog_array,
                                              t.index] for t in self.tail_programs],
                           "tracepoint_programs": [[t.name, t.insns.hex(), [list(r) for r in t.relocations],
                                                    t.tracepoint] for t in self.tracepoint_programs]})

    @classmethod
    def from_json(cls, text: str) -> ProgramImage:
        """Parse and check a cached image; ValueError for anything malformed."""
        try:
            d = json.loads(text)
            if d["format"] != FORMAT:
                raise ValueError(f"format {d['format']!r}")
            insns = bytes.fromhex(d["insns"])
            maps = tuple(MapSpec(str(n), int(t), int(k), int(v), int(e), int(f), None if i is None else str(i))
                         for n, t, k, v, e, f, i in d["maps"])
            tails = tuple(TailProgram(str(n), bytes.fromhex(code), tuple((int(i), str(m)) for i, m in relocs),
                                      str(array), int(index))
                          for n, code, relocs, array, index in d.get("tail_programs", []))
            tracepoints = tuple(TracepointProgram(str(n), bytes.fromhex(code),
                                                  tuple((int(i), str(m)) for i, m in relocs), str(tp))
                                for n, code, relocs, tp in d.get("tracepoint_programs", []))
            image = cls(name=str(d["name"]), prog_type=int(d["prog_type"]), license=str(d["license"]),
                        kern_version=int(d["kern_version"]), insns=insns,
                        relocations=tuple((int(i), str(n)) for i, n in d["relocations"]), maps=maps,
                        tail_programs=tails, tracepoint_programs=tracepoints)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed BPF program image: {e}") from None
        image.check()
        return image

    def check(self) -> None:
        """Everything a loader relies on; the kernel's verifier checks the program itself."""
        names = {m.name for m in self.maps}
        if len(names) != len(self.maps):
            raise ValueError("two maps with one name")
        for m in self.maps:
            if m.type not in _KNOWN_MAP_TYPES or not 0 < m.max_entries <= 1 << 24 or not 0 <= m.key_size <= 4096 \
                    or not 0 <= m.value_size <= 1 << 20 or (m.inner is not None and m.inner not in names):
                raise ValueError(f"unexpected map {m}")
        _check_code(self.insns, self.relocations, names)
        arrays = {m.name: m for m in self.maps if m.type == MAP_PROG_ARRAY}
        for t in self.tail_programs:
            _check_code(t.insns, t.relocations, names)
            if t.prog_array not in arrays or not 0 <= t.index < arrays[t.prog_array].max_entries:
                raise ValueError(f"tail program {t.name} goes to slot {t.index} of {t.prog_array!r}, "
                                 "not a program array slot")
        for r in self.tracepoint_programs:
            _check_code(r.insns, r.relocations, names)
            if not r.tracepoint or len(r.tracepoint) > 64 or not r.tracepoint.replace("_", "").isalnum():
                raise ValueError(f"tracepoint program {r.name} attaches to {r.tracepoint!r}, not a tracepoint name")


def _check_code(insns: bytes, relocations: tuple[tuple[int, str], ...], names: set[str]) -> None:
    n = len(insns) // 8
    if len(insns) % 8 or not 0 < n <= MAX_INSNS:
        raise ValueError(f"program of {len(insns)} bytes is not 1..{MAX_INSNS} instructions")
    for index, name in relocations:
        if not 0 <= index < n - 1 or name not in names or insns[index * 8] != LD_IMM64 \
                or insns[index * 8 + 1] >> 4 != PSEUDO_MAP_FD:
            raise ValueError(f"relocation ({index}, {name!r}) is not a map load")
    subprograms(insns)


def link_callbacks(insns: bytes) -> bytes:
    """`insns` with each load of FIND_VMA_STORE_MARK made a load of the callback that stores the VMA it is given,
    appended once as a subprogram (see _STORE_VMA_CALLBACK); unchanged when there is none."""
    code = bytearray(insns)
    n = len(code) // 8
    linked = False
    i = 0
    while i < n - 1:
        if code[i * 8] == LD_IMM64:
            lo, hi = struct.unpack_from("<I", code, i * 8 + 4)[0], struct.unpack_from("<I", code, i * 8 + 12)[0]
            if code[i * 8 + 1] >> 4 == 0 and hi << 32 | lo == FIND_VMA_STORE_MARK:
                code[i * 8 + 1] = (code[i * 8 + 1] & 0x0F) | PSEUDO_FUNC << 4
                struct.pack_into("<i", code, i * 8 + 4, n - (i + 1))
                struct.pack_into("<I", code, i * 8 + 12, 0)
                linked = True
            i += 2
        else:
            i += 1
    return bytes(code + _STORE_VMA_CALLBACK) if linked else insns


def subprograms(insns: bytes) -> list[int]:
    """First instruction of each subprogram, the program's own (0) first: the targets of callback loads (the only
    subprograms BCC's images have). ValueError for a load that points outside the program."""
    n = len(insns) // 8
    starts = {0}
    i = 0
    while i < n:
        if insns[i * 8] == LD_IMM64:
            if insns[i * 8 + 1] >> 4 == PSEUDO_FUNC:
                target = i + 1 + struct.unpack_from("<i", insns, i * 8 + 4)[0]
                if not 0 < target < n:
                    raise ValueError(f"instruction {i} loads a callback at {target}, outside the program")
                starts.add(target)
            i += 2
        else:
            i += 1
    return sorted(starts)


@functools.cache
def _func_btf() -> bytes:
    """The smallest BTF that func_info can name: an int, a prototype returning it, a global function (each
    program) and a static one (each callback: the verifier takes only static callbacks, and only with func_info)."""
    strings = b"\0int\0prog\0callback\0"
    types = (struct.pack("<IIII", strings.index(b"int"), 1 << 24, 4, 1 << 24 | 32)  # 1: INT, signed, 32 bits
             + struct.pack("<III", 0, 13 << 24, 1)  # 2: FUNC_PROTO, no parameters, returns int
             + struct.pack("<III", strings.index(b"prog"), 12 << 24 | 1, 2)  # 3: FUNC, global
             + struct.pack("<III", strings.index(b"callback"), 12 << 24, 2))  # 4: FUNC, static
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings


def map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    bpf(_OBJ_GET_INFO_BY_FD, _ObjInfo(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    return info


@functools.cache
def _possible_cpus() -> int:
    """Fixed at boot; a per-CPU map's value has one slot per possible CPU (read once, not per lookup)."""
    return _count_cpus(Path("/sys/devices/system/cpu/possible").read_text())


def online_cpus() -> list[int]:
    return _expand_cpus(Path("/sys/devices/system/cpu/online").read_text())


def _expand_cpus(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _count_cpus(text: str) -> int:
    return max(_expand_cpus(text)) + 1


class BpfMap:
    """One map of a loaded program, by fd; keys and values are bytes or ctypes objects."""

    def __init__(self, spec: MapSpec, fd: int) -> None:
        self.spec = spec
        self.fd = fd

    def update(self, key: bytes | ct._CData, value: bytes | ct._CData) -> None:
        k, v = _buffer(key, self.spec.key_size), _buffer(value, self.spec.value_size)
        bpf(_MAP_UPDATE_ELEM, _Elem(map_fd=self.fd, key=ct.addressof(k), value=ct.addressof(v)))

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        """Write `count` packed keys and values in one BPF_MAP_UPDATE_BATCH (100k unwind rows: one syscall
        instead of 100k)."""
        if len(keys) != count * self.spec.key_size or len(values) != count * self.spec.value_size:
            raise ValueError(f"{len(keys)}/{len(values)} bytes for {count} entries of {self.spec.name}")
        k, v = ct.create_string_buffer(keys, len(keys) or 1), ct.create_string_buffer(values, len(values) or 1)
        done = 0
        while done < count:  # the kernel may stop early (EINTR-free, but count says how far it got)
            attr = _Batch(keys=ct.addressof(k) + done * self.spec.key_size,
                          values=ct.addressof(v) + done * self.spec.value_size, count=count - done, map_fd=self.fd)
            bpf(_MAP_UPDATE_BATCH, attr)
            if attr.count == 0:
                raise OSError(errno.EIO, f"batch update of {self.spec.name} made no progress")
            done += attr.count

    def delete(self, key: bytes | ct._CData) -> bool:
        """False when the key was not there."""
        k = _buffer(key, self.spec.key_size)
        try:
            bpf(_MAP_DELETE_ELEM, _Elem(map_fd=self.fd, key=ct.addressof(k)))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def percpu_sum(self, index: int) -> int:
        """Sum over every possible CPU of a per-CPU array's u64 slot."""
        stride = (self.spec.value_size + 7) // 8 * 8
        values = (ct.c_uint64 * (_possible_cpus() * stride // 8))()
        key = ct.c_uint32(index)
        bpf(_MAP_LOOKUP_ELEM, _Elem(map_fd=self.fd, key=ct.addressof(key), value=ct.addressof(values)))
        return sum(values[::stride // 8])

    def lookup_and_delete_batch(self, keys: bytearray | ct.Array, values: bytearray | ct.Array,
                                token_in: ct.c_uint32 | None, token_out: ct.c_uint32) -> tuple[int, bool]:
        """One BPF_MAP_LOOKUP_AND_DELETE_BATCH into writable buffers of whole keys and values, as many
        entries as `keys` holds: (how many came, whether the map is done)."""
        key_bytes, value_bytes = memoryview(keys).nbytes, memoryview(values).nbytes
        count, extra = divmod(key_bytes, self.spec.key_size)
        if extra or not count or value_bytes < count * self.spec.value_size:  # the kernel writes count of each
            raise ValueError(f"batch buffers of {key_bytes} and {value_bytes} bytes for {self.spec.key_size}-byte "
                             f"keys and {self.spec.value_size}-byte values")
        attr = _Batch(in_batch=_addr(token_in), out_batch=ct.addressof(token_out), count=count, map_fd=self.fd,
                      keys=ct.addressof(ct.c_char.from_buffer(keys)),
                      values=ct.addressof(ct.c_char.from_buffer(values)))
        try:
            bpf(_MAP_LOOKUP_AND_DELETE_BATCH, attr)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the walk reached the end (count says what came with it)
                raise
            return attr.count, True
        return attr.count, attr.count == 0


def create_map(spec: MapSpec, inner_fd: int = 0) -> BpfMap:
    """A new map of `spec`'s shape; the caller closes its fd (a program's maps close with the program)."""
    return BpfMap(spec, bpf(_MAP_CREATE, _MapCreate(map_type=spec.type, key_size=spec.key_size,
                                                    value_size=spec.value_size, max_entries=spec.max_entries,
                                                    map_flags=spec.flags, inner_map_fd=inner_fd,
                                                    map_name=spec.name.encode()[:15])))


def _buffer(data: bytes | ct._CData, size: int) -> ct.Array | ct._CData:
    if isinstance(data, bytes | bytearray):
        if len(data) != size:
            raise ValueError(f"{len(data)} bytes for a {size}-byte map field")
        return ct.create_string_buffer(bytes(data), size)
    if ct.sizeof(data) != size:
        raise ValueError(f"{type(data).__name__} is {ct.sizeof(data)} bytes for a {size}-byte map field")
    return data


class RingBuffer:
    """Consumer of a BPF_MAP_TYPE_RINGBUF, as libbpf's ring_buffer reads one: mmap + epoll."""

    def __init__(self, fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self._page, self._mask = page, size - 1
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        # the producer page, then the data area mapped twice: a record that wraps reads as one piece
        self._data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)

    def poll(self, timeout: float, callback: Callable[[bytes], None]) -> int:
        """Deliver every complete record; wait up to `timeout` seconds for one if none is there."""
        n = self._consume(callback)
        if n == 0:
            self._epoll.poll(timeout)
            n = self._consume(callback)
        return n

    def _consume(self, callback: Callable[[bytes], None]) -> int:
        n = 0
        cons = struct.unpack_from("<Q", self._consumer, 0)[0]
        while True:
            prod = struct.unpack_from("<Q", self._data, 0)[0]
            if cons >= prod:
                return n
            while cons < prod:
                at = self._page + (cons & self._mask)
                header = struct.unpack_from("<I", self._data, at)[0]
                if header & _RINGBUF_BUSY:
                    return n  # being written: the next poll gets it
                length = header & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
                if not header & _RINGBUF_DISCARD:
                    callback(self._data[at + _RINGBUF_HDR: at + _RINGBUF_HDR + length])
                    n += 1
                cons += (length + _RINGBUF_HDR + 7) & ~7
                struct.pack_into("<Q", self._consumer, 0, cons)

    def close(self) -> None:
        self._epoll.close()
        self._consumer.close()
        self._data.close()


class LoadedProgram:
    """An image's maps created and its program loaded in the kernel; closed together."""

    def __init__(self, image: ProgramImage) -> None:
        self.image = image
        self.maps: dict[str, BpfMap] = {}
        self.prog_fd = -1
        self.tail_fds: dict[str, int] = {}
        self.tracepoint_fds: dict[str, int] = {}
        self._perf_fds: list[int] = []
        self._link_fds: list[int] = []
        self._rings: list[RingBuffer] = []
        self._btf_fd = -1  # the BTF of callbacks' func_info, loaded for the first program with one
        try:
            for spec in sorted(image.maps, key=lambda m: m.inner is not None):  # templates first
                self.maps[spec.name] = create_map(spec, self.maps[spec.inner].fd if spec.inner is not None else 0)
            # tail programs first: the entry program may run as soon as it is attached
            for t in image.tail_programs:
                fd = self.tail_fds[t.name] = self._load(t.name, self._relocated(t.insns, t.relocations))
                self.maps[t.prog_array].update(ct.c_uint32(t.index), ct.c_uint32(fd))
            self.prog_fd = self._load(image.name, self._relocated(image.insns, image.relocations))
            for r in image.tracepoint_programs:
                self.tracepoint_fds[r.name] = self._load(r.name, self._relocated(r.insns, r.relocations),
                                                         PROG_TYPE_RAW_TRACEPOINT)
        except BaseException:
            self.close()
            raise

    def _relocated(self, code: bytes, relocations: tuple[tuple[int, str], ...]) -> bytes:
        insns = bytearray(code)
        for index, name in relocations:
            struct.pack_into("<i", insns, index * 8 + 4, self.maps[name].fd)
        return bytes(insns)

    def _load(self, name: str, insns: bytes, prog_type: int | None = None) -> int:
        code = ct.create_string_buffer(insns, len(insns))
        license = ct.create_string_buffer(self.image.license.encode())
        attr = _ProgLoad(prog_type=self.image.prog_type if prog_type is None else prog_type,
                         insn_cnt=len(insns) // 8, insns=ct.addressof(code),
                         license=ct.addressof(license), kern_version=self.image.kern_version,
                         prog_name=name.encode()[:15])
        starts = subprograms(insns)
        if len(starts) > 1:  # callbacks: the verifier wants each subprogram's BTF function
            info = b"".join(struct.pack("<II", at, 3 if at == 0 else 4) for at in starts)
            func_info = ct.create_string_buffer(info, len(info))
            attr.prog_btf_fd, attr.func_info_rec_size = self._func_btf_fd(), 8
            attr.func_info, attr.func_info_cnt = ct.addressof(func_info), len(starts)
        for _ in range(5):
            try:
                return bpf(_PROG_LOAD, attr)
            except OSError as e:
                if e.errno != errno.EAGAIN:  # the verifier gives up with EAGAIN when a signal arrives
                    break
        log_buf = ct.create_string_buffer(1 << 20)
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log_buf), ct.addressof(log_buf)
        try:
            return bpf(_PROG_LOAD, attr)
        except OSError as e:
            tail = log_buf.value.decode("utf-8", "replace").strip().splitlines()[-20:]
            raise OSError(e.errno, f"the kernel refused BPF program {name}: {e.strerror}\n"
                          + "\n".join(tail)) from None

    def _func_btf_fd(self) -> int:
        if self._btf_fd < 0:
            blob = _func_btf()
            data = ct.create_string_buffer(blob, len(blob))
            self._btf_fd = bpf(_BTF_LOAD, _BtfLoad(btf=ct.addressof(data), btf_size=len(blob)))
        return self._btf_fd

    def attach_perf_event(self, ev_type: int, ev_config: int, sample_freq: int, cpus: Iterable[int]) -> None:
        """One sampling perf event per CPU, each running the program (as BCC's attach_perf_event does)."""
        for cpu in cpus:
            attr = _PerfEventAttr(type=ev_type, size=ct.sizeof(_PerfEventAttr), config=ev_config,
                                  sample_freq=sample_freq, flags=_PERF_ATTR_FREQ | _PERF_ATTR_DISABLED)
            fd = _libc.syscall(ct.c_long(_numbers()[1]), ct.byref(attr), ct.c_int(-1), ct.c_int(cpu), ct.c_int(-1),
                               ct.c_ulong(_PERF_FLAG_FD_CLOEXEC))
            if fd < 0:
                e = ct.get_errno()
                raise OSError(e, f"perf_event_open on CPU {cpu}: {os.strerror(e)}")
            self._perf_fds.append(fd)
            for request, arg in ((_PERF_EVENT_IOC_SET_BPF, self.prog_fd), (_PERF_EVENT_IOC_ENABLE, 0)):
                if _libc.ioctl(fd, request, arg) < 0:
                    e = ct.get_errno()
                    raise OSError(e, f"perf event ioctl {request:#x} on CPU {cpu}: {os.strerror(e)}")

    def attach_tracepoints(self) -> None:
        """Attach each raw tracepoint program to its tracepoint (until close)."""
        for r in self.image.tracepoint_programs:
            name = ct.create_string_buffer(r.tracepoint.encode())
            try:
                self._link_fds.append(bpf(_RAW_TRACEPOINT_OPEN, _RawTracepointOpen(
                    name=ct.addressof(name), prog_fd=self.tracepoint_fds[r.name])))
            except OSError as e:
                raise OSError(e.errno, f"attaching {r.name} to raw tracepoint {r.tracepoint}: {e.strerror}") \
                    from None

    def ring_buffer(self, name: str) -> RingBuffer:
        m = self.maps[name]
        ring = RingBuffer(m.fd, m.spec.max_entries)
        self._rings.append(ring)
        return ring

    def close(self) -> None:
        for fd in self._perf_fds:
            _libc.ioctl(fd, _PERF_EVENT_IOC_DISABLE, 0)
            os.close(fd)
        self._perf_fds = []
        for fd in self._link_fds:
            os.close(fd)
        self._link_fds = []
        for ring in self._rings:
            ring.close()
        self._rings = []
        if self.prog_fd >= 0:
            os.close(self.prog_fd)
            self.prog_fd = -1
        for fd in [*self.tail_fds.values(), *self.tracepoint_fds.values()]:
            os.close(fd)
        self.tail_fds, self.tracepoint_fds = {}, {}
        for m in self.maps.values():
            os.close(m.fd)
        self.maps = {}
        if self._btf_fd >= 0:
            os.close(self._btf_fd)
            self._btf_fd = -1


class ImageCache:
    """Compiled images on disk, one file per key. Root-only: loading bytecode is a root privilege,
    so a file or directory anyone else could have written is never used."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @classmethod
    def from_env(cls) -> ImageCache:
        """$PODFLAME_BPF_CACHE (empty: no cache), else /var/cache/podflame/bpf (the DaemonSet's hostPath)."""
        value = os.environ.get("PODFLAME_BPF_CACHE")
        if value is None:
            return cls(DEFAULT_CACHE_DIR)
        return cls(Path(value) if value.strip() else None)

    @staticmethod
    def key(source: bytes, cflags: Iterable[str], fn_name: str) -> str:
        """Everything the bytecode depends on: source, flags, BCC, the headers it compiled against, the kernel.

        `source` is the text BCC compiles, local headers included (bpf.expanded_source), and `fn_name`
        names every program taken from it."""
        h = hashlib.sha256()
        uname = os.uname()
        kdir = Path("/lib/modules") / uname.release
        parts = [str(FORMAT), fn_name, *sorted(cflags), uname.release, uname.version, uname.machine,
                 os.environ.get("BCC_KERNEL_SOURCE", ""), *(os.path.realpath(kdir / d) for d in ("build", "source"))]
        for lib in ("/usr/lib/x86_64-linux-gnu/libbcc.so.0", "/usr/lib/aarch64-linux-gnu/libbcc.so.0",
                    "/usr/lib/libbcc.so.0", "/usr/lib64/libbcc.so.0"):
            try:
                st = os.stat(lib)
            except OSError:
                continue
            parts.append(f"{os.path.realpath(lib)}:{st.st_size}:{st.st_mtime_ns}")
        for p in parts:
            h.update(p.encode() + b"\0")
        h.update(source)
        return h.hexdigest()[:32]

    def get(self, key: str) -> ProgramImage | None:
        if self.directory is None:
            return None
        path = self.directory / f"{key}.json"
        try:
            self._check_owned(self.directory)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except (OSError, PermissionError) as e:
            log.warning("not using the compiled BPF program cache %s: %s", self.directory, e)
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                self._check_owned_stat(os.fstat(f.fileno()), path)
                data = f.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise ValueError(f"over {MAX_IMAGE_BYTES} bytes")
            return ProgramImage.from_json(data.decode())
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.warning("ignoring the cached BPF program %s (%s): compiling again", path, e)
            return None

    def put(self, key: str, image: ProgramImage) -> None:
        if self.directory is None:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._check_owned(self.directory)
            path = self.directory / f"{key}.json"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(image.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            self._evict(keep=path)
        except OSError as e:  # a read-only or full disk costs the next start a compile, nothing more
            log.warning("could not keep the compiled BPF program in %s: %s", self.directory, e)

    def _evict(self, keep: Path) -> None:
        assert self.directory is not None
        files = sorted((p for p in self.directory.glob("*.json") if p != keep),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for p in files[MAX_CACHED_IMAGES - 1:]:
            p.unlink(missing_ok=True)

    @staticmethod
    def _check_owned(directory: Path) -> None:
        ImageCache._check_owned_stat(os.stat(directory), directory)

    @staticmethod
    def _check_owned_stat(st: os.stat_result, path: Path) -> None:
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(errno.EPERM, f"{path} is writable by someone other than uid {os.geteuid()}")
