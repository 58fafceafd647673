"""pprof (profile.proto) encoding and decoding of `Profile`s.

pprof is both the agent -> server wire format and the download format: one standard that
`go tool pprof` reads. A batch of profiles travels as one pprof whose samples carry their
label sets as pprof string labels. The message classes are built at import time from a
descriptor written here (no generated _pb2 file to keep in sync); protobuf does the bytes.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Iterable
from collections.abc import Mapping as AbcMapping
from collections.abc import Set as AbcSet
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from podflame.errors import InvalidInput, TooLarge
from podflame.limits import DEFAULT_LIMITS, DecodeLimits
from podflame.model import Frame, FrameKind, Line, Mapping, Profile

KERNEL_MAPPING = "[kernel.kallsyms]"
PYTHON_MAPPING = "[python]"  # Python frames' mapping: pprof has no frame kind, tools show the mapping name
MAX_DECOMPRESSED_BYTES = 256 << 20

_I64, _U64, _BOOL, _STR, _MSG, _BYTES = (
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
)
_REPEATED = object()

# Field numbers of perftools.profiles (github.com/google/pprof proto/profile.proto).
_SCHEMA: dict[str, list[tuple]] = {
    "Profile": [
        ("sample_type", 1, "ValueType", _REPEATED), ("sample", 2, "Sample", _REPEATED),
        ("mapping", 3, "Mapping", _REPEATED), ("location", 4, "Location", _REPEATED),
        ("function", 5, "Function", _REPEATED), ("string_table", 6, _STR, _REPEATED),
        ("drop_frames", 7, _I64), ("keep_frames", 8, _I64), ("time_nanos", 9, _I64),
        ("duration_nanos", 10, _I64), ("period_type", 11, "ValueType"), ("period", 12, _I64),
        ("comment", 13, _I64, _REPEATED), ("default_sample_type", 14, _I64),
    ],
    "ValueType": [("type", 1, _I64), ("unit", 2, _I64)],
    "Sample": [("location_id", 1, _U64, _REPEATED), ("value", 2, _I64, _REPEATED), ("label", 3, "Label", _REPEATED)],
    "Label": [("key", 1, _I64), ("str", 2, _I64), ("num", 3, _I64), ("num_unit", 4, _I64)],
    "Mapping": [
        ("id", 1, _U64), ("memory_start", 2, _U64), ("memory_limit", 3, _U64), ("file_offset", 4, _U64),
        ("filename", 5, _I64), ("build_id", 6, _I64), ("has_functions", 7, _BOOL),
        ("has_filenames", 8, _BOOL), ("has_line_numbers", 9, _BOOL), ("has_inline_frames", 10, _BOOL),
    ],
    "Location": [("id", 1, _U64), ("mapping_id", 2, _U64), ("address", 3, _U64),
                 ("line", 4, "Line", _REPEATED), ("is_folded", 5, _BOOL)],
    "Line": [("function_id", 1, _U64), ("line", 2, _I64), ("column", 3, _I64)],
    "Function": [("id", 1, _U64), ("name", 2, _I64), ("system_name", 3, _I64), ("filename", 4, _I64),
                 ("start_line", 5, _I64)],
}


def _build_messages(schema: dict[str, list[tuple]] = _SCHEMA) -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(name="podflame/profile.proto", package="perftools.profiles",
                                             syntax="proto3")
    for msg_name, fields in schema.items():
        msg = fdp.message_type.add(name=msg_name)
        for name, number, ftype, *rest in fields:
            f = msg.field.add(name=name, number=number)
            f.label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if rest
                       else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if isinstance(ftype, str):
                f.type, f.type_name = _MSG, f".perftools.profiles.{ftype}"
            else:
                f.type = ftype
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    fd = pool.FindFileByName(fdp.name)
    return {name: message_factory.GetMessageClass(fd.message_types_by_name[name]) for name in schema}


_MESSAGES = _build_messages()
PprofProfile = _MESSAGES["Profile"]
_Label = _MESSAGES["Label"]
_Sample = _MESSAGES["Sample"]
# The same wire format read with each sample's labels left as bytes (a length-delimited message
# field may be read as bytes): `tuple(sample.label)` is then one C call, a dict key for the label
# set, and each distinct label is parsed once per request instead of once per sample.
_IngestProfile = _build_messages({**_SCHEMA, "Sample": [
    ("location_id", 1, _U64, _REPEATED), ("value", 2, _I64, _REPEATED), ("label", 3, _BYTES, _REPEATED)]})["Profile"]


class PprofError(InvalidInput):
    """The bytes are not a valid pprof profile; the message says what is wrong."""


class PprofTooLarge(PprofError, TooLarge):
    """The profile is over a size limit (raw or inflated): a server answers 413, not 400."""


def decompress(data: bytes, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Gunzip if gzip, refusing to inflate past `limit` (decompression bombs fail closed)."""
    return bytes(inflate(data, DecodeLimits(inflated_bytes=limit, inflate_floor=limit)))


# Top-level Profile fields counted while inflating: field number -> the DecodeLimits attribute.
_COUNTED = {6: "strings", 2: "samples", 4: "locations", 5: "functions", 3: "mappings"}
_CHUNK = 1 << 20  # inflate this much at a time: a refused body costs at most one chunk past its limit


class _FieldScan:
    """Walks the top-level fields of a Profile as its bytes arrive, counting against `DecodeLimits`.

    protobuf allocates every repeated entry of a message it parses (a 2-byte empty string becomes a
    16-byte view, then a Python str): the counts must be known before `ParseFromString`, and a body that
    breaks one is refused at the chunk that breaks it, not after inflating and parsing all of it.
    """

    __slots__ = ("cap", "counts", "fields", "limits", "pos", "string_bytes")

    def __init__(self, limits: DecodeLimits, cap: int) -> None:
        self.limits, self.cap = limits, cap
        self.pos = self.fields = self.string_bytes = 0
        self.counts = dict.fromkeys(_COUNTED, 0)

    def scan(self, buf: bytes | bytearray) -> None:
        """Account for every complete field in `buf` from where the last call stopped."""
        pos, end, counts = self.pos, len(buf), self.counts
        n_fields, max_fields = self.fields, self.limits.top_fields
        while pos < end:
            start = pos
            tag, pos = _varint(buf, pos, end)
            if tag < 0:
                pos = start
                break
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise PprofError(f"not a pprof profile: field number 0 at byte {start}")
            if wire == 2:
                length, pos = _varint(buf, pos, end)
                if length < 0:
                    pos = start
                    break
                if pos + length > self.cap:
                    raise PprofTooLarge(f"a field at byte {start} declares {length} bytes: the profile inflates "
                                        f"past its {self.cap} byte limit (INFLATE_RATIO, INFLATE_FLOOR, "
                                        "MAX_INFLATED_BYTES)")
                if pos + length > end:
                    pos = start
                    break
                pos += length
                if number in counts:
                    counts[number] += 1
                    if number == 6:
                        self.string_bytes += length
                        if self.string_bytes > self.limits.string_bytes:
                            raise PprofTooLarge(f"string_table holds over {self.limits.string_bytes} bytes "
                                                "(limit MAX_STRING_BYTES)")
                    if counts[number] > getattr(self.limits, _COUNTED[number]):
                        what = _COUNTED[number]
                        raise PprofTooLarge(f"profile has over {getattr(self.limits, what)} {what} "
                                            f"(limit MAX_{what.upper()})")
            elif wire == 0:
                value, pos = _varint(buf, pos, end)
                if value < 0:
                    pos = start
                    break
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                if pos + width > end:
                    pos = start
                    break
                pos += width
            else:
                raise PprofError(f"not a pprof profile: wire type {wire} at byte {start}")
            n_fields += 1
            if n_fields > max_fields:
                raise PprofTooLarge(f"profile has over {max_fields} top-level fields (limit MAX_TOP_FIELDS)")
        self.pos, self.fields = pos, n_fields

    def finish(self, buf: bytes | bytearray) -> None:
        if self.pos != len(buf):
            raise PprofError(f"not a pprof profile: truncated field at byte {self.pos}")


def _varint(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """(value, next position), or (-1, pos) when `buf` ends inside the varint."""
    if pos < end:
        b = buf[pos]
        if b < 0x80:
            return b, pos + 1
    value = shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise PprofError(f"not a pprof profile: varint longer than 10 bytes at byte {pos}")
    return -1, pos


def inflate(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes | bytearray:
    """The profile's bytes (gunzipped if gzip), counted against `limits` as they are inflated.

    Inflation stops at the first byte past `limits.inflate_cap(len(data))` (an absolute cap and a ratio
    to the body), so a gzip bomb costs one chunk, never its inflated size; garbage fails at its first field.
    """
    cap = limits.inflate_cap(len(data))
    if data[:2] != b"\x1f\x8b":
        if len(data) > limits.inflated_bytes:
            raise PprofTooLarge(f"profile is {len(data)} bytes, over the {limits.inflated_bytes} byte limit "
                                "(MAX_INFLATED_BYTES)")
        scan = _FieldScan(limits, limits.inflated_bytes)  # a field past the end is truncated, not too large
        scan.scan(data)
        scan.finish(data)
        return data
    # Every counted entry takes at least 2 bytes: a profile this small cannot break a count, and protobuf's
    # own parse of it is small, so typical pushes skip the Python walk (~1 us per field).
    unscanned = min(2 * min(limits.strings, limits.samples, limits.locations, limits.functions, limits.mappings,
                            limits.top_fields), limits.string_bytes)
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    scan = _FieldScan(limits, cap)
    pending = data
    while not d.eof:
        try:
            chunk = d.decompress(pending, min(_CHUNK, cap + 1 - len(out)))
        except zlib.error as e:
            raise PprofError(f"corrupt gzip: {e}") from None
        pending = d.unconsumed_tail
        if not chunk and not pending:
            if d.eof:
                break
            raise PprofError("corrupt gzip: the stream is truncated")
        out += chunk
        if len(out) > cap:
            raise PprofTooLarge(f"profile inflates past its {cap} byte limit ({limits.inflate_ratio}x the "
                                f"{len(data)} byte body, at least {limits.inflate_floor}, at most "
                                f"{limits.inflated_bytes}: INFLATE_RATIO, INFLATE_FLOOR, MAX_INFLATED_BYTES)")
        if len(out) > unscanned:
            scan.scan(out)
    if d.unused_data:  # storing the first part alone would answer 200 and lose the rest
        if d.unused_data[:2] == b"\x1f\x8b":
            raise PprofError("a second gzip stream follows the first (profiles concatenated): push one profile "
                             "per request")
        raise PprofError(f"{len(d.unused_data)} bytes follow the end of the gzip stream: the body is not one "
                         "gzip profile (a truncated or mixed upload?)")
    if len(out) > unscanned:
        scan.finish(out)
    return out


class _Strings:
    def __init__(self) -> None:
        self.table: list[str] = [""]
        self.index: dict[str, int] = {"": 0}

    def __call__(self, s: str | None) -> int:
        if not s:
            return 0
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.table)
            self.table.append(s)
        return i


_KERNEL = Mapping(0, 0xFFFFFFFFFFFFFFFF, 0, KERNEL_MAPPING)
_PYTHON = Mapping(0, 0xFFFFFFFFFFFFFFFF, 0, PYTHON_MAPPING)


def encode(profiles: Iterable[Profile], *, common_labels: AbcMapping[str, str] | None = None,
           compress: bool = True, compresslevel: int = 6) -> bytes:
    """Encode profiles of one sample type into one pprof; each sample carries its profile's labels.

    Labels in `common_labels` are left off the samples (they travel elsewhere, e.g. in the URL).
    `compresslevel` 1 halves gzip's CPU for 10-15% more bytes (the agent's choice: its CPU is the budget).
    Every distinct frame becomes one location, looked up by a dict get per frame of each stack;
    the location, its lines and functions are built once, when the frame is first met.
    """
    profiles = list(profiles)
    common = dict(common_labels or {})
    msg = PprofProfile()
    s = _Strings()
    sample_type, unit = (profiles[0].sample_type, profiles[0].unit) if profiles else ("samples", "count")
    period = profiles[0].period_ns if profiles else 0
    msg.sample_type.add(type=s(sample_type), unit=s(unit))
    if sample_type == "samples" and period:
        msg.sample_type.add(type=s("cpu"), unit=s("nanoseconds"))
    # A CPU profile's period is CPU time between samples; any other type's (heap bytes, mutex contentions,
    # goroutines) is counted in its own unit, which go tool pprof prints: never call it CPU time.
    cpu = sample_type in ("samples", "cpu") and unit in ("count", "nanoseconds")
    msg.period_type.type, msg.period_type.unit = (s("cpu"), s("nanoseconds")) if cpu else (s(sample_type), s(unit))
    msg.period = period
    if profiles:
        start = min(p.start_ns for p in profiles)
        msg.time_nanos = start
        msg.duration_nanos = max(p.end_ns for p in profiles) - start

    # mapping -> its Mapping message's fields; the messages are added at the end, the main one first
    mappings: dict[Mapping, tuple[int, int, int]] = {}  # -> (id, filename, build_id) string indexes
    function_ids: dict[tuple[str, str | None], int] = {}
    location_ids: dict[Frame, int] = {}
    add_location, add_function = msg.location.add, msg.function.add

    def location_id(frame: Frame) -> int:
        lid = location_ids[frame] = len(location_ids) + 1
        m = frame.mapping
        if m is None and frame.kind is FrameKind.KERNEL:
            m = _KERNEL
        elif m is None and frame.kind is FrameKind.PYTHON:
            m = _PYTHON
        if m is None:
            mid = 0
        else:
            known = mappings.get(m)
            if known is None:
                known = mappings[m] = (len(mappings) + 1, s(m.path), s(m.build_id))
            mid = known[0]
        loc = add_location(id=lid, mapping_id=mid, address=frame.address)
        if frame.lines:
            for line in frame.lines:
                key = (line.function, line.file)
                fid = function_ids.get(key)
                if fid is None:
                    fid = function_ids[key] = len(function_ids) + 1
                    name = s(line.function)
                    add_function(id=fid, name=name, system_name=name, filename=s(line.file))
                loc.line.add(function_id=fid, line=line.line or 0)
        elif frame.reason is not None:
            # named by its fallback, a function with no file and a location with no line number: what a
            # `Line(frame.fallback_name())` gives, without making one (each such frame is one of its own:
            # a stripped binary's addresses, hundreds a batch)
            key = (frame.fallback_name(), None)
            fid = function_ids.get(key)
            if fid is None:
                fid = function_ids[key] = len(function_ids) + 1
                name = s(key[0])
                add_function(id=fid, name=name, system_name=name)
            loc.line.add(function_id=fid)
        return lid

    # Locations by the frame object's identity first: stacks share frame objects (the agent's memos), and an
    # int's hash is C while a Frame's is a Python call, per frame of every sample. Identity is safe: every
    # frame is held by `profiles` until this returns. Equal frames that are distinct objects still share one
    # location through `location_ids` (by value), looked up once per object.
    by_object: dict[int, int] = {}
    get = location_ids.get

    def object_location(frame: Frame) -> int:
        lid = by_object[id(frame)] = get(frame) or location_id(frame)
        return lid

    two_values = len(msg.sample_type) == 2
    add_sample = msg.sample.add
    oget = by_object.get
    for p in profiles:
        if (p.sample_type, p.unit) != (sample_type, unit):
            raise ValueError("encode() takes profiles of one sample type")
        labels = [_Label(key=s(k), str=s(v)) for k, v in sorted(p.labels.items()) if common.get(k) != v]
        # the profile's labels once as bytes, merged into each sample: half the cost of copying the messages
        label_bytes = _Sample(label=labels).SerializeToString()
        per_sample = p.period_ns or period  # merged series may differ in period
        for stack, value in p.samples.items():
            ids = [oget(id(f)) or object_location(f) for f in reversed(stack)]
            add_sample(location_id=ids, value=[value, value * per_sample] if two_values else [value]) \
                .MergeFromString(label_bytes)
    _add_mappings(msg, mappings)
    msg.string_table.extend(s.table)
    raw = msg.SerializeToString()
    return gzip.compress(raw, compresslevel=compresslevel) if compress else raw


def _add_mappings(msg: Any, mappings: dict[Mapping, tuple[int, int, int]]) -> None:
    """pprof tools take the first mapping for the main binary (`go tool pprof` prints it as `File:`);
    mappings are met leaf first, which would make it the kernel or a library. The lowest user mapping
    is the executable in a process's address space (PIE or not), so it goes first; ids do not change."""
    order = list(mappings)
    users = [m for m in order if m.limit != _KERNEL.limit]  # not the kernel's (nor Python's)
    if users:
        main = min(users, key=lambda m: m.start)
        if order[0] is not main:
            order.remove(main)
            order.insert(0, main)
    add = msg.mapping.add
    for m in order:
        mid, filename, build_id = mappings[m]
        add(id=mid, memory_start=m.start, memory_limit=m.limit, file_offset=m.offset, filename=filename,
            build_id=build_id, has_functions=True)


@dataclass(slots=True)
class DecodedProfile:
    """One (sample type, label set) of a decoded pprof, its stacks still as the pprof's location ids."""

    labels: dict[str, str]
    sample_type: str
    unit: str
    samples: dict[tuple[int, ...], int] = field(default_factory=dict)  # location ids, leaf first -> value
    total: int = 0  # sum of `samples`' values (checked against DecodeLimits.value as it grows)


@dataclass(slots=True)
class Decoded:
    """A validated pprof by id: mappings, functions and locations once each, profiles over location ids.

    What a store interns directly (no Frame or stack tuples per profile, no value hashing of frames);
    `profiles()` builds the public `Profile`s from it. Every reference has been checked.
    """

    start_ns: int
    duration_ns: int
    period_ns: int
    mappings: dict[int, Mapping | None]  # None: the kernel or Python frames
    functions: dict[int, tuple[str, str | None]]  # id -> (name, file)
    # location id -> (address, mapping id, kind, [(function id, line), ...] innermost first)
    locations: dict[int, tuple[int, int, FrameKind, list[tuple[int, int]]]]
    decoded: list[DecodedProfile]

    def frame(self, location_id: int) -> Frame:
        address, mapping_id, kind, lines = self.locations[location_id]
        return Frame(address, self.mappings.get(mapping_id), kind,
                     tuple(Line(*self.functions[fid], line or None) for fid, line in lines))

    def profiles(self) -> list[Profile]:
        frames: dict[int, Frame] = {}
        stacks: dict[tuple[int, ...], tuple[Frame, ...]] = {}
        out = []
        for d in self.decoded:
            prof = Profile(labels=dict(d.labels), start_ns=self.start_ns, duration_ns=self.duration_ns,
                           period_ns=self.period_ns, sample_type=d.sample_type, unit=d.unit)
            samples = prof.samples
            for key, value in d.samples.items():
                stack = stacks.get(key)
                if stack is None:
                    for i in key:
                        if i not in frames:
                            frames[i] = self.frame(i)
                    stack = stacks[key] = tuple(frames[i] for i in reversed(key))
                samples[stack] = samples.get(stack, 0) + value  # equal frames under other location ids merge
            out.append(prof)
        return out


def decode(data: bytes, labels: AbcMapping[str, str] | None = None, *,
           limit: int | None = None, numeric_labels: bool = True,
           limits: DecodeLimits | None = None) -> list[Profile]:
    """Decode a pprof (gzip or plain) into one Profile per (sample type, label set).

    `labels` apply to every sample; a sample's own string labels (and numeric ones, as text, unless
    `numeric_labels` is false) are added to them. Invalid references raise PprofError rather than
    being dropped.
    """
    return decode_ids(data, labels, limit=limit, numeric_labels=numeric_labels, limits=limits).profiles()


# A label name as Prometheus has it; names starting with `__` are Prometheus' own.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def check_label_name(name: str) -> None:
    """Refuse what a selector could not name or a Prometheus user would misread (`__name__`)."""
    if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
        raise PprofError(f"bad label name {name[:100]!r}: label names match [a-zA-Z_][a-zA-Z0-9_]* "
                         "and do not start with __")


def decode_ids(data: bytes, labels: AbcMapping[str, str] | None = None, *,
               limit: int | None = None, numeric_labels: bool = True,
               limits: DecodeLimits | None = None, refused_names: AbcSet[str] = frozenset()) -> Decoded:
    """`decode` without building Profiles: what ingest stores (see `Decoded`).

    Every bound in `limits` (default `DEFAULT_LIMITS`; `limit` overrides the inflated size) is checked
    before what it counts is allocated; values, their sums per series and times are range-checked
    (never wrapped). `labels` are the request's: a sample's label may add to them, never contradict one;
    `refused_names` are names no sample label may have (e.g. the server's own parameters).
    """
    lim = limits or DEFAULT_LIMITS
    if limit is not None:
        lim = replace(lim, inflated_bytes=limit)
    raw = inflate(data, lim)
    msg = _IngestProfile()
    try:
        msg.ParseFromString(raw)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise PprofError(f"not a pprof profile: {e}") from None
    del raw
    st = list(msg.string_table)
    if st and st[0] != "":
        raise PprofError("string_table[0] must be the empty string")
    n_strings = len(st)
    _check_times(msg.time_nanos, msg.duration_nanos, msg.period, lim)

    def string(i: int) -> str:
        if not 0 <= i < n_strings:
            raise PprofError(f"string index {i} out of range (table has {n_strings})")
        return st[i]

    samples = msg.sample
    if not msg.sample_type and samples and samples[0].value:
        # Some producers omit sample_type; pprof itself names such values "unknown".
        types = [("unknown", "count")] * len(samples[0].value)
    else:
        types = [(string(t.type) or "unknown", string(t.unit) or "count") for t in msg.sample_type]
    functions = {f.id: (string(f.name) or f"function#{f.id}", string(f.filename) or None) for f in msg.function}
    mappings: dict[int, Mapping | None] = {}
    kernel_ids, python_ids = set(), set()
    for m in msg.mapping:
        path = string(m.filename)
        if path == KERNEL_MAPPING:
            mappings[m.id] = None
            kernel_ids.add(m.id)
        elif path == PYTHON_MAPPING:
            mappings[m.id] = None
            python_ids.add(m.id)
        else:
            mappings[m.id] = Mapping(m.memory_start, m.memory_limit, m.file_offset, path, string(m.build_id) or None)
    locations: dict[int, tuple[int, int, FrameKind, list[tuple[int, int]]]] = {}
    used_functions: set[int] = set()
    kernel, native, python = FrameKind.KERNEL, FrameKind.NATIVE, FrameKind.PYTHON
    for loc in msg.location:  # the hot loop of a request: few attribute reads per location
        mid = loc.mapping_id
        if mid and mid not in mappings:
            raise PprofError(f"location {loc.id} references unknown mapping {mid}")
        lines = [(ln.function_id, ln.line) for ln in loc.line]
        used_functions.update(f for f, _ in lines)
        locations[loc.id] = (loc.address, mid, kernel if mid in kernel_ids else python if mid in python_ids
                             else native, lines)
    if not used_functions <= functions.keys():
        for lid, (*_, lines) in locations.items():
            for f, _ in lines:
                if f not in functions:
                    raise PprofError(f"location {lid} references unknown function {f}")

    base = dict(labels or {})
    for name in base:
        check_label_name(name)
    out: dict[tuple[int, tuple[tuple[str, str], ...]], DecodedProfile] = {}
    label_sets: dict[tuple[bytes, ...], tuple[dict[str, str], tuple[tuple[str, str], ...]]] = {}
    checked: set[tuple[int, ...]] = set()
    n_types = len(types)
    vmax, max_series, max_labels = lim.value, lim.series, lim.labels_per_sample
    for sample in samples:
        values = sample.value
        if len(values) != n_types:
            raise PprofError(f"sample has {len(values)} values for {n_types} sample types")
        key = tuple(sample.location_id)
        if key not in checked:
            for i in key:
                if i not in locations:
                    raise PprofError(f"sample references unknown location {i}")
            checked.add(key)
        raw_labels = tuple(sample.label)
        label_set = label_sets.get(raw_labels)
        if label_set is None:
            if len(raw_labels) > max_labels:
                raise PprofTooLarge(f"a sample has {len(raw_labels)} labels, over the {max_labels} per sample "
                                    "limit (MAX_LABELS_PER_SAMPLE)")
            label_set = label_sets[raw_labels] = _label_set(base, raw_labels, string, numeric_labels, lim,
                                                                  refused_names)
        for ti, value in enumerate(values):
            if not value:
                continue
            if not 0 < value <= vmax:
                raise PprofError(f"sample value {value} is outside [0, {vmax}] (limit MAX_VALUE)")
            prof = out.get((ti, label_set[1]))
            if prof is None:
                if len(out) >= max_series:
                    raise PprofTooLarge(f"push holds over {max_series} series (distinct label sets and sample "
                                        "types; limit MAX_SERIES)")
                prof = out[(ti, label_set[1])] = DecodedProfile(label_set[0], *types[ti])
            prof.total += value
            if prof.total > vmax:
                raise PprofError(f"the values of series {_brief(label_set[0])} ({types[ti][0]}) sum past {vmax} "
                                 "(limit MAX_VALUE)")
            prof.samples[key] = prof.samples.get(key, 0) + value
    return Decoded(msg.time_nanos, msg.duration_nanos, msg.period, mappings, functions, locations,
                   list(out.values()))


def _brief(labels: AbcMapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v[:40]!r}" for k, v in sorted(labels.items())[:6]) + "}"


def _check_times(time_ns: int, duration_ns: int, period: int, lim: DecodeLimits) -> None:
    """Times stay inside what an int64 nanosecond column and a query can name; never wrapped."""
    if not 0 <= time_ns <= lim.time_ns:
        raise PprofError(f"time_nanos {time_ns} is outside [0, {lim.time_ns}] (limit MAX_TIME_NS: 2200-01-01)")
    if not 0 <= duration_ns <= lim.time_ns - time_ns:
        raise PprofError(f"duration_nanos {duration_ns} is negative or ends past {lim.time_ns} (limit MAX_TIME_NS)")
    if not 0 <= period <= lim.value:
        raise PprofError(f"period {period} is outside [0, {lim.value}] (limit MAX_VALUE)")


def _label_set(base: dict[str, str], raw: tuple[bytes, ...], string: Callable[[int], str],
               numeric: bool, lim: DecodeLimits,
               refused: AbcSet[str]) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """A sample's labels (given as serialized Label messages) over `base`, and their sorted items.

    A sample label may add to `base` (the request's labels) or repeat one, never change one: whoever may
    push to a URL naming `node=a` cannot file samples under `node=b`.
    """
    labels = dict(base)
    for b in raw:
        try:
            lab = _Label.FromString(b)
        except Exception as e:
            raise PprofError(f"not a pprof profile: bad label: {e}") from None
        if lab.str:
            key, value = string(lab.key), string(lab.str)
        elif numeric:
            key, value = string(lab.key), str(lab.num)
            if not key:
                continue
        else:
            continue
        check_label_name(key)
        if key in refused:
            raise PprofError(f"sample label name {key!r} is reserved")
        if len(value) > lim.label_value_bytes:
            raise PprofTooLarge(f"label {key} has a {len(value)} character value, over the "
                                f"{lim.label_value_bytes} limit (MAX_LABEL_VALUE_BYTES)")
        if key in base and base[key] != value:
            raise PprofError(f"sample label {key}={value[:100]!r} contradicts the request's "
                             f"{key}={base[key][:100]!r}: the request's labels are not a sample's to change")
        labels[key] = value
    return labels, tuple(sorted(labels.items()))


def default_sample_type(data: bytes) -> str | None:
    """The producer's preferred sample type (pprof's default_sample_type, else the last one)."""
    msg = PprofProfile()
    msg.ParseFromString(inflate(data))
    st = list(msg.string_table)
    if msg.default_sample_type and 0 <= msg.default_sample_type < len(st):
        return st[msg.default_sample_type]
    return st[msg.sample_type[-1].type] if msg.sample_type else None
