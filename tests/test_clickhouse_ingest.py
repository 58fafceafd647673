"""What a put writes to ClickHouse reads back byte for byte: names and labels with quotes, backslashes, newlines
and non-ASCII text (on chDB a put's few new dictionary rows travel as SQL literals and a read's few ids too;
more go as Arrow)."""

from __future__ import annotations

import uuid
from pathlib import Path

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import as_ingested, put
from web.query.merge import Query, merged
from web.store.dsn import open_store
from web.store.selector import MATCH_ALL

S = 10**9
T0 = 1_700_000_000 * S


def test_odd_names_and_labels_read_back_exactly(chdb_dir: Path) -> None:
    odd = ["it's", "back\\slash", "new\nline", "tab\there", "é✓ 名前", "quote\"d", "\\'", "{}[](),"]
    exe = Mapping(0x400000, 0x500000, 0, "/opt/it's\\here/app", "bu'ild")
    frames = [Frame(0x401000 + 16 * i, exe, FrameKind.NATIVE, (Line(name, f"{name}.c", 3 + i),))
              for i, name in enumerate(odd)]
    many = [Frame(0x402000 + 16 * i, exe, FrameKind.NATIVE, (Line(f"fn'{i}", None, None),)) for i in range(1100)]
    profiles = [Profile({"pod": v, "ns": "a'b"}, T0, 10 * S, 10_000_000, {tuple(frames[: k + 1]): k + 1})
                for k, v in enumerate(odd)]
    profiles.append(Profile({"pod": "many"}, T0, 10 * S, 10_000_000, {(f,): 1 for f in many}))  # Arrow, not literals
    store = open_store(f"chdb://{chdb_dir}?database=odd_{uuid.uuid4().hex[:12]}")
    try:
        put(store, profiles[:-1])  # 8 new rows per dictionary: literals
        put(store, profiles[-1:])  # 1,100: Arrow through Python(), and read back with the ids through Python() too
        assert store.label_values("pod", T0, T0 + S) == sorted([*odd, "many"])
        assert store.label_values("ns", T0, T0 + S) == ["a'b"]
        m = merged(store, Query(MATCH_ALL, T0, T0 + 60 * S))
        stacks = store.stacks(m.stack_ids.tolist())
        got = {stacks[i]: v for i, v in zip(m.stack_ids.tolist(), m.values.tolist(), strict=True)}
        want: dict[tuple[Frame, ...], int] = {}
        for p in profiles:
            for st, v in p.samples.items():
                key = tuple(as_ingested(f) for f in st)
                want[key] = want.get(key, 0) + v
        assert got == want
    finally:
        store.close()
