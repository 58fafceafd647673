"""The embedded store: exact round trips, selection by labels and time, atomicity, durability, threads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Profile, Unresolved
from tests.builders import as_ingested, batches, put
from web.store.base import Store
from web.store.columns import decode_columns, encode_columns
from web.store.selector import parse_selector
from web.store.sqlite import SCHEMA_VERSION, SqliteStore

S = 1_000_000_000
T0 = 1_795_000_000 * S
EXE = Mapping(0x555500000000, 0x555500010000, 0x1000, "/usr/bin/shop", "abcdef0123")
KERNEL_ADDR = 0xFFFFFFFF81000000  # above 2**63: stored as signed and back
MAIN = Frame(0x555500001100, EXE, FrameKind.NATIVE, (Line("main", "shop.c", 10),))
INLINED = Frame(0x555500001200, EXE, FrameKind.NATIVE, (Line("hash_step", "hash.h", 7), Line("checkout", "shop.c", 42)))
KERNEL = Frame(KERNEL_ADDR, None, FrameKind.KERNEL, (Line("ksys_read"),))
STRIPPED = Frame(0x555500001300, EXE, FrameKind.NATIVE, (), Unresolved.NO_SYMBOLS)
STORED_STRIPPED = as_ingested(STRIPPED)  # ingest (pprof) names it by its fallback name


def profile(labels: dict[str, str], start: int = T0, **stacks: int) -> Profile:
    """Profile with stacks named by keys: 'a' = (MAIN, INLINED), 'b' = (MAIN, KERNEL), 'c' = (MAIN, STRIPPED)."""
    shapes = {"a": (MAIN, INLINED), "b": (MAIN, KERNEL), "c": (MAIN, STRIPPED), "root": ()}
    p = Profile(labels=labels, start_ns=start, duration_ns=10 * S, period_ns=10_101_010)
    for key, value in stacks.items():
        p.add(shapes[key], value)
    return p


@pytest.fixture
def store(tmp_path: Path, make_store: Callable[[Path], Store]) -> Store:
    """The store under test: each test taking it runs on every backend (tests/conftest.py `make_store`)."""
    return make_store(tmp_path)


def merged(store: SqliteStore, selector: str = "{}", t0: int = 0, t1: int = 2 * T0, sample_type: str = "samples",
           unit: str | None = None, exact_labels: dict[str, str] | None = None) -> dict[tuple, int]:
    refs = store.select(parse_selector(selector), t0, t1, sample_type, unit)
    if exact_labels is not None:
        refs = [r for r in refs if dict(r.series.labels) == {k: v for k, v in exact_labels.items() if v}]
    cols = store.read(refs)
    stacks = store.stacks(set(cols.stack.tolist()))
    out: dict[tuple, int] = {}
    for sid, v in zip(cols.stack.tolist(), cols.value.tolist(), strict=True):
        out[stacks[sid]] = out.get(stacks[sid], 0) + v
    return out


def test_columns_codec_round_trips_any_int64() -> None:
    stack = np.array([9, 1, 70000, 5], dtype=np.int64)
    value = np.array([-3, 2**62, 0, 7], dtype=np.int64)
    s, v = decode_columns(encode_columns(stack, value))
    assert s.tolist() == [1, 5, 9, 70000] and v.tolist() == [2**62, 7, -3, 0]
    s, v = decode_columns(encode_columns(np.empty(0, np.int64), np.empty(0, np.int64)))
    assert s.size == v.size == 0


def test_round_trip_keeps_frames_exactly(store: SqliteStore) -> None:
    result = put(store, [profile({"pod": "p1"}, a=30, b=10, c=5, root=2)])
    assert (result.profiles, result.samples) == (1, 4)
    assert merged(store) == {(MAIN, INLINED): 30, (MAIN, KERNEL): 10, (MAIN, STORED_STRIPPED): 5, (): 2}
    (ref,) = store.select(parse_selector("{}"), 0, 2 * T0)
    assert (ref.start_ns, ref.duration_ns, ref.period_ns, ref.total) == (T0, 10 * S, 10_101_010, 47)
    assert dict(ref.series.labels) == {"pod": "p1"}
    assert (ref.series.sample_type, ref.series.unit) == ("samples", "count")


def test_reopen_reads_the_same_data_and_reuses_dictionaries(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    put(s, [profile({"pod": "p1"}, a=1)])
    s.close()
    s = SqliteStore(tmp_path)
    put(s, [profile({"pod": "p1"}, start=T0 + S, a=2, b=3)])
    assert merged(s) == {(MAIN, INLINED): 3, (MAIN, KERNEL): 3}
    assert s.stats()["series"] == 1 and s.stats()["stacks"] == 2 and s.stats()["frames"] == 3
    s.close()


def test_selection_by_labels_time_and_type(store: SqliteStore) -> None:
    put(store, [profile({"pod": "p1", "ns": "shop"}, a=1),
               profile({"pod": "p2", "ns": "shop"}, start=T0 + 60 * S, a=2),
               profile({"pod": "p3", "ns": "ops"}, start=T0 + 120 * S, b=4)])
    cpu = profile({"pod": "p1", "ns": "shop"}, a=100)
    cpu.sample_type, cpu.unit = "cpu", "nanoseconds"
    put(store, [cpu])
    assert merged(store, '{ns="shop"}') == {(MAIN, INLINED): 3}
    assert merged(store, '{pod=~"p[13]"}') == {(MAIN, INLINED): 1, (MAIN, KERNEL): 4}
    assert merged(store, '{pod!="p1", ns!~"ops"}') == {(MAIN, INLINED): 2}
    assert merged(store, "{}", T0 + 60 * S, T0 + 120 * S) == {(MAIN, INLINED): 2}  # half-open: p3 excluded
    assert merged(store, '{missing=""}') == merged(store)
    assert store.types(0, 2 * T0) == [("cpu", "nanoseconds"), ("samples", "count")]
    assert store.types(T0 + S, 2 * T0) == [("samples", "count")]
    assert store.label_names(0, 2 * T0) == ["ns", "pod"]
    assert store.label_values("pod", 0, 2 * T0) == ["p1", "p2", "p3"]
    assert store.label_values("pod", T0 + S, 2 * T0, parse_selector('{ns="shop"}')) == ["p2"]
    assert store.label_values("nope", 0, 2 * T0) == []


def test_many_series_take_the_time_scan_path(store: SqliteStore) -> None:
    put(store, [profile({"pod": f"p{i:04d}"}, start=T0 + i, a=1) for i in range(600)])
    assert merged(store, '{pod=~"p0.*"}') == {(MAIN, INLINED): 600}
    assert len(store.select(parse_selector('{pod=~"p00.*"}'), T0, T0 + 50)) == 50
    assert len(store.label_values("pod", 0, 2 * T0)) == 600


def test_empty_label_values_are_dropped(store: SqliteStore) -> None:
    put(store, [profile({"pod": "p1", "container": ""}, a=1)])
    (ref,) = store.select(parse_selector("{}"), 0, 2 * T0)
    assert dict(ref.series.labels) == {"pod": "p1"}


def test_failed_put_stores_nothing_and_leaves_the_store_usable(store: SqliteStore, tmp_path: Path) -> None:
    put(store, [profile({"pod": "p1"}, a=1)])
    good, bad = batches([profile({"pod": "p3"}, c=1), profile({"pod": "p2"}, b=1)])
    bad.series[0].samples[next(iter(bad.series[0].samples))] = 2**70  # type: ignore[index]  # not int64: fails midway
    with pytest.raises((OverflowError, ValueError)):
        store.put([good, bad])
    assert store.label_values("pod", 0, 2 * T0) == ["p1"]
    assert merged(store) == {(MAIN, INLINED): 1}
    if isinstance(store, SqliteStore):  # its own files: the failed put left no blob behind
        assert len(list((tmp_path / "blobs").rglob("*.pfz"))) == 1
    put(store, [profile({"pod": "p3"}, c=1)])  # dictionary ids from the rolled-back put are not reused
    assert merged(store) == {(MAIN, INLINED): 1, (MAIN, STORED_STRIPPED): 1}


def test_orphan_blob_from_a_crash_is_removed_on_open(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    put(s, [profile({"pod": "p1"}, a=1)])
    s.close()
    (blob,) = (tmp_path / "blobs").rglob("*.pfz")
    orphan = blob.with_name(f"{int(blob.stem) + 1:010d}.pfz")
    orphan.write_bytes(b"half-written")
    s = SqliteStore(tmp_path)
    assert not orphan.exists() and blob.exists()
    s.close()


def test_durability_settings(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    s.close()
    with pytest.raises(ValueError, match="durable"):
        SqliteStore(tmp_path, synchronous="OFF")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer podflame"):
        SqliteStore(tmp_path)


def test_concurrent_writers_and_readers(store: SqliteStore) -> None:
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(20):
                put(store, [profile({"pod": f"w{w}"}, start=T0 + i * S, a=1, b=w)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def read() -> None:
        try:
            for _ in range(20):
                merged(store)
                store.label_values("pod", 0, 2 * T0)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(1, 5)]
    threads += [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert merged(store) == {(MAIN, INLINED): 80, (MAIN, KERNEL): 20 * (1 + 2 + 3 + 4)}


def test_a_version_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    put(s, [profile({"pod": "p1"}, a=3)])
    put(s, [profile({"pod": "p1"}, start=T0 + S, b=2)])
    s.close()
    # Turn it into what version 1 wrote: no levels, blob ages, reference counts or compaction state.
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.executescript("""
        DROP INDEX profiles_by_series_level_time; DROP INDEX profiles_by_level_time; DROP INDEX blobs_by_age;
        DROP INDEX blocks_by_series_level_time;
        ALTER TABLE profiles DROP COLUMN level; ALTER TABLE blobs DROP COLUMN max_start_ns;
        ALTER TABLE blobs DROP COLUMN deleted_ns; ALTER TABLE blobs DROP COLUMN live; DROP TABLE compactions;
        CREATE INDEX profiles_by_series_time ON profiles (series, start_ns);
        UPDATE meta SET value='1' WHERE key='schema_version';""")
    db.commit()
    db.close()
    s = SqliteStore(tmp_path)
    assert merged(s) == {(MAIN, INLINED): 3, (MAIN, KERNEL): 2}
    assert s._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert s._db.execute("SELECT live, max_start_ns FROM blobs ORDER BY id").fetchall() == [(1, T0), (1, T0 + S)]
    # Retention works on migrated blobs (their reference counts were rebuilt).
    s.enforce_retention(max_age_ns=1, max_bytes=None, now_ns=T0 + 2, grace_ns=0)
    assert merged(s) == {(MAIN, KERNEL): 2}
    assert len(list((tmp_path / "blobs").rglob("*.pfz"))) == 1
    s.close()


def test_stack_frames_give_stable_frame_ids_and_their_lines(store: SqliteStore) -> None:
    """`stack_frames` and `frame_lines` (what the query name cache uses) agree with `stacks`, here and in the
    interface's defaults: names outermost first with their file and line, a stripped frame by its fallback name."""
    from web.store.base import Store

    put(store, [profile({"pod": "a"}, a=3, b=2, c=1, root=4)])
    ids = sorted(store.read(store.select(parse_selector("{}"), 0, 2 * T0, "samples")).stack.tolist())
    stacks = store.stacks(ids)
    for stack_frames, frame_lines in ((store.stack_frames, store.frame_lines),
                                      (lambda i: Store.stack_frames(store, i), lambda f: Store.frame_lines(store, f))):
        lengths, flat = stack_frames(ids)
        assert lengths.tolist() == [len(stacks[i]) for i in ids] and flat.size == lengths.sum()
        lines = frame_lines(set(flat.tolist()))
        offsets = np.cumsum(lengths) - lengths
        for sid, off, n in zip(ids, offsets.tolist(), lengths.tolist(), strict=True):
            shown = [ln for f in flat[off:off + n].tolist() for ln in lines[f]]
            assert shown == [(ln.function, ln.file, ln.line) if ln else (name, None, None) for f in stacks[sid]
                             for ln, name in zip(reversed(f.lines or (None,)), f.names(), strict=True)]
        assert {ln for ls in lines.values() for ln in ls} == {
            ("main", "shop.c", 10), ("checkout", "shop.c", 42), ("hash_step", "hash.h", 7), ("ksys_read", None, None),
            ("shop+0x2300", None, None)}  # STRIPPED: module+file offset
        _, again = stack_frames(ids[:1])  # ids do not change between calls
        assert again.tolist() == flat[:lengths[0]].tolist()


def test_read_of_many_profiles_across_blobs_matches_each_frame_decoded_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)  # about its blob files
    import os

    for k in range(4):  # blobs of several profiles; stacks of each profile differ in count and ids
        batch = []
        for j in range(3):
            stacks = list({"a": 1 + j, "b": 2 + k, "c": 3, "root": 4 + j * k}.items())[: 1 + (j + k) % 4]
            batch.append(profile({"pod": f"p{j}"}, start=T0 + k * S, **dict(stacks)))
        put(store, batch)
    refs = store.select(parse_selector("{}"), 0, 2 * T0)
    picked = refs[::2] + refs[1::3]  # out of order, from several blobs
    cols = store.read(picked)
    for i, ref in enumerate(picked):
        h = ref.handle
        with open(store._blob_path(h.blob), "rb") as f:
            s, v = decode_columns(os.pread(f.fileno(), h.len, h.off))
        mine = cols.profile == i
        assert cols.stack[mine].tolist() == s.tolist() and cols.value[mine].tolist() == v.tolist()
    store.close()


def test_real_pprof_files_read_back_as_they_decode(tmp_path: Path, corpus: Path) -> None:
    """Real pprof files from other producers and agent-shaped drains, stored through ingest's path into a
    store that already holds some of their frames (cache hits and misses both), read back frame for frame
    as `pprof.decode` gives them."""
    from bench.synthetic import drain, make_node
    from podflame import pprof
    from web.normalize import batch_of

    pods = make_node(pods=12, services=3, stacks_per_pod=40)
    bodies = [pprof.encode(drain(pods, T0 + i * 10 * S, seed=i)) for i in range(3)]
    bodies += [f.read_bytes() for f in sorted((corpus / "pprof").rglob("*.pb.gz"))]
    assert len(bodies) > 10
    store = SqliteStore(tmp_path)
    try:
        for i, body in enumerate(bodies):
            labels = {"node": "n1", "body": str(i)}
            d = pprof.decode_ids(body, labels)
            d.start_ns = d.start_ns or T0 + i
            result = store.put([batch_of(d)])
            want = [p for p in d.profiles() if p.samples]
            assert result.profiles == len(want)
            for p in want:
                got = merged(store, t1=2**63 - 1, sample_type=p.sample_type, unit=p.unit, exact_labels=p.labels)
                assert {k: v for k, v in got.items() if v} == {k: v for k, v in p.samples.items() if v}
        assert store.stats()["frames"] > 100
    finally:
        store.close()


def test_a_version_3_store_gets_the_covering_index_of_blocks(tmp_path: Path) -> None:
    """Schema 3 -> 4: the blocks' covering index is built from the rows already there, and a query
    answers the same blocks and values from it (no read of the profiles table for block rows)."""
    s = SqliteStore(tmp_path)
    for i in range(12):  # two hours of one pod, a profile every 10 min
        put(s, [profile({"pod": "p1"}, start=T0 - T0 % (3600 * S) + i * 600 * S, a=i + 1, b=1)])
    assert s.compact(now_ns=T0 + 3 * 3600 * S) > 0
    def blocks() -> list[tuple[int, ...]]:
        return [(r.start_ns, r.duration_ns, r.total, r.handle.level) for r in s.select(parse_selector("{}"), 0, 2 * T0)]

    before = blocks()
    assert {level for *_, level in before} == {2}  # two hourly blocks answer the range
    s.close()
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.executescript("DROP INDEX blocks_by_series_level_time; UPDATE meta SET value='3' WHERE key='schema_version';")
    db.commit()
    db.close()
    s = SqliteStore(tmp_path)
    try:
        assert s._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert SCHEMA_VERSION == 4
        plan = s._db.execute("EXPLAIN QUERY PLAN SELECT series, start_ns, duration_ns, period_ns, total, blob, off, "
                             "len, id FROM profiles WHERE level > 0 AND series IN (1) AND level=2 AND start_ns>=0")
        assert "COVERING INDEX blocks_by_series_level_time" in str(plan.fetchall())
        assert blocks() == before
        assert merged(s) == {(MAIN, INLINED): sum(range(1, 13)), (MAIN, KERNEL): 12}
    finally:
        s.close()
