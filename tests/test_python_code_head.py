"""CodeReader validates each code object's fixed part every drain (type, first line, the name/qualname/file
name/line table pointers that make its fingerprint) with one precompiled unpack per head: for every layout
podflame knows, it must read exactly the fields at their offsets, as reading each one alone does, and refuse
what it refused before (another type, a NULL pointer)."""

from __future__ import annotations

import random
import struct

import pytest

from profiler.python.code import CodeReader, CodeReadError
from profiler.python.offsets import NO_FIELD, TABLES, PyOffsets

CODE_TYPE = 0x7F00_1234_5678


def _alone(o: PyOffsets, head: bytes) -> tuple[int, ...]:
    """The fingerprint read field by field: (firstlineno, name, [qualname,] filename, linetable)."""
    pointers = [struct.unpack_from("<Q", head, off)[0]
                for off in (o.code_name, o.code_qualname, o.code_filename, o.code_linetable) if off != NO_FIELD]
    return (struct.unpack_from("<i", head, o.code_firstlineno)[0], *pointers)


@pytest.mark.parametrize("version", sorted(TABLES))
def test_the_head_is_read_as_each_field_alone_for_every_layout(version: tuple[int, int]) -> None:
    o = TABLES[version]
    reader = CodeReader(1, o, CODE_TYPE)
    rng = random.Random(version[0] * 100 + version[1])
    for _ in range(200):
        head = bytearray(rng.randbytes(o.code_size))
        struct.pack_into("<Q", head, o.object_type, CODE_TYPE)
        want = _alone(o, bytes(head))
        if 0 in want[1:]:
            continue
        assert reader._check_head(0x1000, bytes(head)) == want
    head = bytearray(rng.randbytes(o.code_size))
    struct.pack_into("<Q", head, o.object_type, CODE_TYPE + 16)  # not a code object
    with pytest.raises(CodeReadError, match="is not a code object"):
        reader._check_head(0x1000, bytes(head))
    struct.pack_into("<Q", head, o.object_type, CODE_TYPE)
    struct.pack_into("<Q", head, o.code_filename, 0)
    with pytest.raises(CodeReadError, match="NULL name or file"):
        reader._check_head(0x1000, bytes(head))
    assert reader.failures == 2
