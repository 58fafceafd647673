"""Queries over a `Store`: select by selector and time range, merge, diff, summarise per series and step.

Merging happens on integer columns (stack id, value) with numpy; each distinct stack id is turned
into function-name ids once per store (cached), so a flame graph, diff or export of a whole node
costs array passes over distinct stacks, never a walk over profiles or frame objects.
Only the `Store` interface is used, so another backend needs no change here.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from podflame.model import Frame, FrameKind, Profile
from web.query import diff as diffmod
from web.query import treebin
from web.query.export import folded_diff_from_stacks, folded_from_stacks
from web.query.flamegraph import diff_tree_from_stacks, flamegraph_from_stacks
from web.query.speedscope import speedscope_from_stacks
from web.query.stacks import NameStacks
from web.query.treecache import Answer, BinaryAnswer, TreeCache, payload_json_head, refs_key
from web.store.base import LabelTotals, Store, StoredProfile, TypePick, frame_origin_of
from web.store.columns import group_sum
from web.store.selector import Selector

DEFAULT_TYPE = "samples"
KIND_STACKS_PER_QUERY = 500  # stacks read per query to learn frame kinds (~65 us each; see NameCache._learn_kinds)


@dataclass(frozen=True, slots=True)
class Query:
    """What every query endpoint takes: a selector, a half-open range [t0, t1) and a sample type."""

    selector: Selector
    t0: int
    t1: int
    sample_type: str | None = None


def resolve_type(store: Store, q: Query) -> tuple[str, str | None]:
    """The (type, unit) to show: the requested type, else `samples` when present, else the first type.

    The unit is None when nothing of that type is in range (any unit then matches, and none exists).
    """
    return store.picked_type(q.selector, q.t0, q.t1, type_pick(q))


def type_pick(q: Query) -> TypePick:
    """`resolve_type`'s choice among the (type, unit) pairs present, for a store that learns them itself."""

    def pick(present: Sequence[tuple[str, str]]) -> tuple[str, str | None]:
        if q.sample_type:
            units = [u for t, u in present if t == q.sample_type]
            return q.sample_type, (units[0] if units else None)
        for t, u in present:
            if t == DEFAULT_TYPE:
                return t, u
        if present:
            return present[0]
        return DEFAULT_TYPE, None

    return pick


def select(store: Store, q: Query, keep: Collection[str] | None = None) -> tuple[str, str, list[StoredProfile]]:
    """The type to show and the refs in range; `keep`: the only labels the caller reads from the refs (() for a
    merge), so a store may answer with refs summing several series (`Store.select_summed`); None: all labels."""
    if keep is None:
        sample_type, unit = resolve_type(store, q)
        refs = store.select(q.selector, q.t0, q.t1, sample_type, unit)
    else:
        sample_type, unit, refs = store.typed_select_summed(q.selector, q.t0, q.t1, type_pick(q), keep)
    return sample_type, unit or (refs[0].series.unit if refs else "count"), refs


class NameCache:
    """Stack id -> function-name ids (root first, inline frames expanded), interned per store, and
    beside them the `file:line` ids of the same frames (a name's source position: the flame graph's
    `locations`, so an inlined function shows where it is, not just that it is).

    Stack and frame ids are stable for a store's life, so each frame is named once and each
    distinct stack translated once, by array gathers over the store's frame ids
    (`Store.stack_frames`, named by `Store.frame_lines`), without building Frame objects.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self.locations: list[str] = [""]
        self._loc_index: dict[str, int] = {"": 0}
        # (name id, location id) pairs: what `hottest` sums over (a few per name, so dense ids).
        self._pairs: dict[tuple[int, int], int] = {}
        self._pair_name: list[int] = []
        self._pair_loc: list[int] = []
        # Store frame id -> slot; a slot's names (and pairs) are _fnames[_fstart:_fstart + _flen] (_fpairs alike).
        self._fslot: dict[int, int] = {}
        self._fstart = np.empty(0, np.int64)
        self._flen = np.empty(0, np.int64)
        self._fnames = np.empty(0, np.int64)
        self._fpairs = np.empty(0, np.int64)
        # Translated stacks back to back: stack id -> slot; a slot's names are flat_names[off:off + len].
        self._slot: dict[int, int] = {}
        self._off = np.empty(0, np.int64)
        self._len = np.empty(0, np.int64)
        self._flat_names = np.empty(0, np.int64)
        self._flat_locs = np.empty(0, np.int64)  # (name, location) pair ids, beside _flat_names
        # The flame graph's colours: (frame kind, module) per (name, location) pair, first frame seen with it
        # (index into _metas, -1 unknown), and per name as a fallback. One name can be two functions (a C
        # `main` and a Python `main`): each query colours a name as its heaviest pair there (`frame_meta`).
        self._metas: list[tuple[str, str]] = []
        self._meta_index: dict[tuple[str, str], int] = {}
        self._pair_meta: list[int] = []
        self._name_meta: dict[int, tuple[str, str]] = {}
        self._kind_pending: dict[int, int] = {}  # frame id -> a stack holding it, until its kind is read
        self._frame_kind: set[int] = set()  # frame ids whose kind was read
        self._pending_stacks: set[int] = set()  # stacks holding a frame of `_kind_pending`, not read yet
        self._lock = threading.Lock()

    def _add_frames(self, store: Store, new: list[int]) -> list[int] | None:
        """Name, location and (name, location) pair ids of these frames, interned in one flat pass (a cold
        server's first view names ~100k frames: a call and three lists per frame cost more than the reads).
        Returns the frames whose kinds were read (None: the store has no `frame_origins`)."""
        got = store.frame_lines(new)
        fids = list(got)
        per_frame = list(got.values())
        lens = np.fromiter(map(len, per_frame), dtype=np.int64, count=len(per_frame))
        index, table = self._index, self.names
        loc_index, locs = self._loc_index, self.locations
        pairs, pair_name, pair_loc = self._pairs, self._pair_name, self._pair_loc
        name_ids: list[int] = []
        pair_ids: list[int] = []
        for lines in per_frame:
            for n, file, line in lines:
                i = index.get(n)
                if i is None:
                    i = index[n] = len(table)
                    table.append(n)
                w = (f"{file}:{line}" if line else file) if file else ""
                j = loc_index.get(w)
                if j is None:
                    j = loc_index[w] = len(locs)
                    locs.append(w)
                pair = pairs.get((i, j))
                if pair is None:
                    pair = pairs[(i, j)] = len(pair_name)
                    pair_name.append(i)
                    pair_loc.append(j)
                    self._pair_meta.append(-1)
                name_ids.append(i)
                pair_ids.append(pair)
        offs = np.cumsum(lens) - lens
        first = len(self._fslot)
        self._fslot.update(zip(fids, range(first, first + len(fids)), strict=True))
        self._fstart = np.concatenate((self._fstart, self._fnames.size + offs))
        self._flen = np.concatenate((self._flen, lens))
        self._fnames = np.concatenate((self._fnames, np.asarray(name_ids, dtype=np.int64)))
        self._fpairs = np.concatenate((self._fpairs, np.asarray(pair_ids, dtype=np.int64)))
        origins = store.frame_origins(new)
        if origins is None:
            return None
        self._frame_kind.update(origins)
        at = dict(zip(fids, zip(offs.tolist(), lens.tolist(), strict=True), strict=True))
        metas: dict[tuple[str, str, str], tuple[str, str]] = {}  # many frames share a binary (or package)
        for fid, origin in origins.items():
            meta = metas.get(origin)
            if meta is None:
                meta = metas[origin] = (origin[0], module_from(*origin))
            off, n = at[fid]
            self._set_meta(name_ids[off:off + n], pair_ids[off:off + n], meta)
        return fids

    def _set_meta(self, names: list[int], pairs: list[int], meta: tuple[str, str]) -> None:
        m = self._meta_index.get(meta)
        if m is None:
            m = self._meta_index[meta] = len(self._metas)
            self._metas.append(meta)
        for name, pair in zip(names, pairs, strict=True):
            self._name_meta.setdefault(name, meta)
            if self._pair_meta[pair] < 0:
                self._pair_meta[pair] = m

    def _names_of(self, fid: int) -> tuple[list[int], list[int]]:
        """Name and pair ids of a frame (one each per inlined level)."""
        slot = self._fslot[fid]
        start = int(self._fstart[slot])
        end = start + int(self._flen[slot])
        return self._fnames[start:end].tolist(), self._fpairs[start:end].tolist()

    def _translate(self, store: Store, sids: list[int]) -> None:
        """Name and location arrays for these stack ids (caller holds the lock)."""
        if not sids:
            return
        n_frames, flat = store.stack_frames(sids)
        # Distinct frames and each position's index among them, by a table over the ids (no sort).
        rank = np.zeros(int(flat.max()) + 1 if flat.size else 0, dtype=np.int64)
        rank[flat] = 1
        uniq = np.flatnonzero(rank)
        rank[uniq] = np.arange(uniq.size)
        inv = rank[flat]
        fslot = self._fslot
        new = [f for f in uniq.tolist() if f not in fslot]
        if new and self._add_frames(store, new) is None:
            self._note_new_frames(sids, n_frames, flat, uniq, new)
        # The frames involved: where each one's names (and pairs) sit in the flat per-frame arrays.
        slots = np.fromiter((fslot[f] for f in uniq.tolist()), dtype=np.int64, count=uniq.size)
        per_len, table_start = self._flen[slots], self._fstart[slots]
        table_names, table_locs = self._fnames, self._fpairs
        # Gather: frame k of the flat list expands to its names at table_start[inv[k]]...
        lens = per_len[inv.reshape(-1)]
        out_start = np.cumsum(lens) - lens
        idx = np.repeat(table_start[inv.reshape(-1)] - out_start, lens) + np.arange(int(lens.sum()))
        names, locs = table_names[idx], table_locs[idx]
        ends = np.concatenate(([0], np.cumsum(lens)))[np.cumsum(n_frames)]
        base = self._flat_names.size
        first = len(self._slot)
        self._slot.update(zip(sids, range(first, first + len(sids)), strict=True))
        self._off = np.concatenate((self._off, base + ends - np.diff(ends, prepend=0)))
        self._len = np.concatenate((self._len, np.diff(ends, prepend=0)))
        self._flat_names = np.concatenate((self._flat_names, names))
        self._flat_locs = np.concatenate((self._flat_locs, locs))

    def _note_new_frames(self, sids: list[int], n_frames: np.ndarray, flat: np.ndarray, uniq: np.ndarray,
                         new: list[int]) -> None:
        """Remember, for each new frame, one stack holding it: `_learn_kinds` reads its kind through that stack."""
        if not new or not flat.size:
            return
        _, first = np.unique(flat, return_index=True)  # first position of each distinct frame id (uniq order)
        wanted = np.isin(uniq, np.asarray(new, dtype=np.int64))
        stack_at = np.searchsorted(np.cumsum(n_frames), first[wanted], side="right")
        holders = [sids[k] for k in stack_at.tolist()]
        self._kind_pending.update(zip(uniq[wanted].tolist(), holders, strict=True))
        self._pending_stacks.update(holders)

    def _learn_kinds(self, store: Store, ids: list[int], weights: np.ndarray) -> None:
        """Kind and module of the names of frames not known yet, through the heaviest stacks of this query first,
        for a backend without `Store.frame_origins`.

        Then only `Store.stacks` hands kinds out (as Frames, ~65 us per stack), so a query reads at most
        KIND_STACKS_PER_QUERY stacks: a profile's first view pays a bounded cost and later views learn the
        rest (frames not learned yet are drawn as of unknown kind). Only this query's stacks are looked
        at, heaviest first, so a store with many pending frames costs no walk over all of them."""
        pending = self._pending_stacks
        chosen: list[int] = []
        for k in np.argsort(-weights, kind="stable").tolist():
            if ids[k] in pending:
                chosen.append(ids[k])
                if len(chosen) == KIND_STACKS_PER_QUERY:
                    break
        if not chosen:
            return
        pending.difference_update(chosen)
        n_frames, flat = store.stack_frames(chosen)
        stacks = store.stacks(chosen)
        ends = np.cumsum(n_frames)
        for k, sid in enumerate(chosen):
            fids = flat[ends[k] - n_frames[k]:ends[k]].tolist()
            for fid, frame in zip(fids, stacks[sid], strict=False):
                if self._kind_pending.pop(fid, None) is None and fid in self._frame_kind:
                    continue
                self._frame_kind.add(fid)
                self._set_meta(*self._names_of(fid), (str(frame.kind), module_of(frame)))

    @property
    def kinds_pending(self) -> bool:
        """True while some frame's kind is not known yet (a payload's colours may still change)."""
        return bool(self._kind_pending)

    def frame_meta(self, names: Sequence[str], hot: dict[str, tuple[str, str]] | None = None
                   ) -> tuple[list[str], list[str]]:
        """Kind and module per name (payload order): `hot`'s (this query's heaviest pair, from `hottest`), else
        the first frame seen with the name; "" for names without frames (the root, [other])."""
        hot = hot or {}
        with self._lock:
            ids = [self._index.get(n) for n in names]
            metas = [hot.get(n) or (self._name_meta.get(i, ("", "")) if i is not None else ("", ""))
                     for n, i in zip(names, ids, strict=True)]
        return [k for k, _ in metas], [m for _, m in metas]

    def _gather(self, stack_ids: list[int], table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """These stacks' rows of `table` back to back, and their lengths (caller holds the lock)."""
        slot = self._slot
        slots = np.fromiter((slot[i] for i in stack_ids), dtype=np.int64, count=len(stack_ids))
        lengths = self._len[slots]
        out_start = np.cumsum(lengths) - lengths
        idx = np.repeat(self._off[slots] - out_start, lengths) + np.arange(int(lengths.sum()))
        return table[idx], lengths

    def name_stacks(self, store: Store, stack_ids: np.ndarray, values: np.ndarray) -> NameStacks:
        """Name stacks for these store stack ids; `values` has one row per id (one or more columns)."""
        ids = stack_ids.tolist()
        with self._lock:
            missing = [i for i in ids if i not in self._slot]
            if missing:
                self._translate(store, missing)
            if self._pending_stacks:
                weights = np.abs(np.asarray(values, dtype=np.int64).reshape(len(ids), -1)).sum(axis=1)
                self._learn_kinds(store, ids, weights)
            flat, lengths = self._gather(ids, self._flat_names)
            names = list(self.names)
        vals = np.asarray(values, dtype=np.int64)
        vals = vals.reshape(len(ids), vals.shape[1] if vals.ndim == 2 else 1)
        return NameStacks(names, flat, np.cumsum(lengths) - lengths, lengths, vals)

    def hottest(self, stack_ids: np.ndarray, ns: NameStacks) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
        """Per name, the `file:line` and the (kind, module) carrying most of its value in these stacks (after
        `name_stacks`)."""
        if not stack_ids.size:
            return {}, {}
        with self._lock:
            pairs, _ = self._gather(stack_ids.tolist(), self._flat_locs)
            locations, metas = list(self.locations), list(self._metas)
            pair_name = np.array(self._pair_name, dtype=np.int64)
            pair_loc = np.array(self._pair_loc, dtype=np.int64)
            pair_meta = np.array(self._pair_meta, dtype=np.int64)
        weight = np.abs(np.repeat(ns.values[:, -1], ns.lengths))
        present = np.zeros(pair_name.size, dtype=bool)
        present[pairs] = True
        sums = np.zeros(pair_name.size, dtype=np.int64)
        np.add.at(sums, pairs, weight)  # per (name, location): a table over pair ids, no sort of occurrences

        def heaviest(keys: np.ndarray, of: np.ndarray) -> dict[int, int]:
            """Name id -> `of` at the pair among `keys` with the most value (ties: the larger `of`)."""
            order = np.lexsort((of[keys], sums[keys], pair_name[keys]))  # the last of each name wins
            return dict(zip(pair_name[keys][order].tolist(), of[keys][order].tolist(), strict=True))

        where = heaviest(np.flatnonzero(present & (pair_loc != 0)), pair_loc)  # location 0: no file known
        kinds = heaviest(np.flatnonzero(present & (pair_meta >= 0)), pair_meta)
        return ({ns.names[n]: locations[w] for n, w in where.items()},
                {ns.names[n]: metas[k] for n, k in kinds.items()})


def module_of(frame: Frame) -> str:
    return module_from(*frame_origin_of(frame))


def module_from(kind: str, mapping_path: str, file: str) -> str:
    """What "colour by module" groups a frame under: its binary's file name, the kernel, or for an
    interpreted frame its package (the directory after site-packages, else the file's directory)."""
    if kind == FrameKind.KERNEL.value:
        return "[kernel]"
    if kind == FrameKind.PYTHON.value:
        parts = [p for p in file.replace("\\", "/").split("/") if p]
        for marker in ("site-packages", "dist-packages"):
            if marker in parts[:-1]:
                return parts[parts.index(marker) + 1].removesuffix(".py")
        return parts[-2] if len(parts) >= 2 else (parts[0] if parts else "[python]")
    return mapping_path.rsplit("/", 1)[-1] if mapping_path else ""


def _intern(index: dict[str, int], table: list[str], s: str) -> int:
    i = index.get(s)
    if i is None:
        i = index[s] = len(table)
        table.append(s)
    return i


_CACHES: weakref.WeakKeyDictionary[Store, NameCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def name_cache(store: Store) -> NameCache:
    with _CACHES_LOCK:
        cache = _CACHES.get(store)
        if cache is None:
            cache = _CACHES[store] = NameCache()
        return cache


def _dominant_period(refs: Sequence[StoredProfile]) -> int:
    """The period that carries most of the value: one number must describe a merged profile."""
    weight: dict[int, int] = defaultdict(int)
    for r in refs:
        weight[r.period_ns] += abs(r.total) or 1
    return max(weight.items(), key=lambda kv: (kv[1], kv[0]))[0] if weight else 0


def _common_labels(refs: Sequence[StoredProfile]) -> dict[str, str]:
    if not refs:
        return {}
    labels = dict(refs[0].series.labels)
    for r in refs[1:]:
        if labels:
            labels = {k: v for k, v in labels.items() if r.series.labels.get(k) == v}
    return labels


def _window(refs: Sequence[StoredProfile], q: Query) -> tuple[int, int]:
    if not refs:
        return q.t0, q.t1 - q.t0
    start = min(r.start_ns for r in refs)
    return start, max(r.start_ns + r.duration_ns for r in refs) - start


@dataclass(frozen=True, slots=True)
class Merged:
    """A query's result as distinct stack ids and summed values, with what describes it."""

    sample_type: str
    unit: str
    refs: list[StoredProfile]
    stack_ids: np.ndarray
    values: np.ndarray

    @property
    def period_ns(self) -> int:
        return _dominant_period(self.refs)


def merged(store: Store, q: Query, sample_type: str | None = None, unit: str | None = None,
           refs: list[StoredProfile] | None = None) -> Merged:
    """Every matching profile in range summed per stack id (for one (type, unit), resolved from `q`);
    `refs` when the caller selected them already."""
    if sample_type is None:
        sample_type, unit, refs = select(store, q, keep=())
    else:
        if refs is None:
            refs = store.select_summed(q.selector, q.t0, q.t1, sample_type, unit, keep=())
        unit = unit or (refs[0].series.unit if refs else "count")
    if not refs:
        empty = np.empty(0, np.int64)
        return Merged(sample_type, unit or "count", refs, empty, empty)
    ids, values = store.read_merged(refs)  # summed in the engine where the store can (ClickHouse)
    return Merged(sample_type, unit or "count", refs, ids, values)


def _meta(m: Merged) -> dict[str, Any]:
    return {"unit": m.unit, "type": m.sample_type, "period_ns": m.period_ns}


def _flamegraph_of(store: Store, m: Merged, max_nodes: int | None) -> dict[str, Any]:
    cache = name_cache(store)
    ns = cache.name_stacks(store, m.stack_ids, m.values)
    payload = flamegraph_from_stacks(ns, max_nodes)
    where, hot = cache.hottest(m.stack_ids, ns)
    payload.update(_meta(m), locations=[where.get(n, "") for n in payload["names"]])
    payload["kinds"], payload["modules"] = cache.frame_meta(payload["names"], hot)
    return payload


def _range(q: Query) -> dict[str, float]:
    return {"from": q.t0 / 1e9, "to": q.t1 / 1e9}  # what a "now-15m" meant: for downloads and links


def flamegraph(store: Store, q: Query, max_nodes: int | None = None) -> dict[str, Any]:
    """The flame-graph payload (web/flamegraph.py) of the merged query."""
    return {**_flamegraph_of(store, merged(store, q), max_nodes), **_range(q)}


def flamegraph_answer(store: Store, q: Query, max_nodes: int | None, cache: TreeCache | None,
                      absolute: bool = False, binary: bool = False) -> tuple[Answer, dict[str, float]]:
    """`flamegraph` as JSON (an `Answer` and the per-request range that completes it), from `cache` when the
    same stored profiles were drawn before (web/query/treecache.py). `absolute`: the range was given as fixed
    times (a link, a chart selection), which may then be kept by range too. `binary`: web/query/treebin.py's
    form instead of JSON (the page's)."""
    keys: list[Hashable] = []
    if cache is not None and store.immutable_refs and absolute:
        # An absolute range asked again with no write since: not even the index is read.
        generation = store.generation()
        if generation is not None:
            keys.append(("flamegraph-range", q, max_nodes, binary, generation))
            hit = cache.get(keys[0])
            if hit is not None:
                return hit, _range(q)
    sample_type, unit, refs = select(store, q, keep=())
    if cache is not None and store.immutable_refs:
        keys.append(("flamegraph", sample_type, unit, max_nodes, binary, refs_key(refs)))
        hit = cache.get(keys[-1])
        if hit is not None:
            for key in keys[:-1]:
                cache.put(key, hit)
            return hit, _range(q)
    payload = _flamegraph_of(store, merged(store, q, sample_type, unit, refs), max_nodes)
    answer = BinaryAnswer(treebin.encode(payload)) if binary else Answer(payload_json_head(payload))
    if cache is not None and not name_cache(store).kinds_pending:  # kinds still pending: not final
        for key in keys:
            cache.put(key, answer)
    return answer, _range(q)


def folded(store: Store, q: Query) -> str:
    m = merged(store, q)
    return folded_from_stacks(name_cache(store).name_stacks(store, m.stack_ids, m.values))


def speedscope(store: Store, q: Query, name: str) -> dict[str, Any]:
    m = merged(store, q)
    return speedscope_from_stacks(name_cache(store).name_stacks(store, m.stack_ids, m.values), name, m.unit)


def _pair(store: Store, comp: Query, base: Query) -> tuple[Merged, Merged, NameStacks]:
    """Both sides of a diff in one (type, unit) (resolved from the comparison), as two value columns."""
    c = merged(store, comp)
    b = merged(store, base, c.sample_type, c.unit if c.refs else None)
    ids = np.union1d(c.stack_ids, b.stack_ids)
    values = np.zeros((ids.size, 2), dtype=np.int64)
    values[np.searchsorted(ids, b.stack_ids), 0] = b.values
    values[np.searchsorted(ids, c.stack_ids), 1] = c.values
    return b, c, name_cache(store).name_stacks(store, ids, values)


def _per_count(m: Merged) -> tuple[float, bool]:
    """How much value one sample is worth, for the significance test; False when values are not counts."""
    if m.unit == "count":
        return 1.0, True
    if m.unit == "nanoseconds" and m.period_ns > 0:
        return float(m.period_ns), True
    return 1.0, False


def diff(store: Store, comp: Query, base: Query, max_nodes: int | None = None, limit: int = 50) -> dict[str, Any]:
    """Baseline vs comparison: the two-valued tree, per-function table and significant regressions."""
    b, c, ns = _pair(store, comp, base)
    payload = diff_tree_from_stacks(ns, max_nodes)
    payload.update(_meta(c))
    base_unit, base_counts = _per_count(b)
    comp_unit, comp_counts = _per_count(c)
    rows = diffmod.function_table(ns, base_unit, comp_unit, base_counts and comp_counts)
    payload["functions"] = rows[:limit]
    payload["regressions"] = diffmod.regressions(rows, limit)
    payload["improvements"] = diffmod.improvements(rows, limit)
    payload["rule"] = {"min_samples": diffmod.MIN_SAMPLES, "min_share_change": diffmod.MIN_SHARE_CHANGE,
                       "alpha": diffmod.ALPHA, "tested": sum(1 for r in rows if r["p_value"] is not None),
                       "test": "two-sided binomial, Bonferroni over tested functions"}
    return payload


def folded_diff(store: Store, comp: Query, base: Query, normalize: bool = False) -> str:
    _, _, ns = _pair(store, comp, base)
    return folded_diff_from_stacks(ns, normalize)


def cpu_series(store: Store, q: Query, step_ns: int) -> dict[str, Any]:
    """Value per step [t0 + k*step, t0 + (k+1)*step), from index metadata only (no sample data read).

    The store sums totals per step (`Store.step_totals`): pre-aggregated blocks serve whole steps,
    or are split by their timelines, so every point is exact and a day reads blocks, not profiles.
    """
    sample_type, unit, st = store.typed_step_totals(q.selector, q.t0, q.t1, step_ns, type_pick(q))
    unit = unit or (st.refs[0].series.unit if st.refs else "count")
    n = -(-(q.t1 - q.t0) // step_ns)
    values = [0] * n
    for sums in st.by_period.values():
        values = [a + b for a, b in zip(values, sums.tolist(), strict=True)]
    cpu_ns: list[int] | None = None
    if (sample_type, unit) == ("cpu", "nanoseconds"):
        cpu_ns = values
    elif (sample_type, unit) == ("samples", "count") and any(p > 0 for p in st.by_period):
        cpu_ns = [0] * n
        for period, sums in st.by_period.items():
            cpu_ns = [a + period * b for a, b in zip(cpu_ns, sums.tolist(), strict=True)]
    step_s = step_ns / 1e9
    return {"from": q.t0 / 1e9, "to": q.t1 / 1e9, "step": step_s, "type": sample_type, "unit": unit,
            "timestamps": [(q.t0 + k * step_ns) / 1e9 for k in range(n)], "values": values,
            "cores": None if cpu_ns is None else [v / 1e9 / step_s for v in cpu_ns]}


def profiles_by_series(store: Store, q: Query) -> tuple[str, str, list[Profile]]:
    """One merged profile per matching series (labels kept), e.g. for a pprof download."""
    sample_type, unit, refs = select(store, q)
    if not refs:
        return sample_type, unit, []
    cols = store.read(refs)
    series_ids = np.array([r.series.id for r in refs], dtype=np.int64)[cols.profile]
    by_series: dict[int, list[StoredProfile]] = defaultdict(list)
    for r in refs:
        by_series[r.series.id].append(r)
    keys, values = group_sum((series_ids << 32) | cols.stack, cols.value)
    stack_of, series_of = (keys & 0xFFFFFFFF).tolist(), (keys >> 32).tolist()
    stacks = store.stacks(set(stack_of))
    out: dict[int, Profile] = {}
    for series_id, stack_id, value in zip(series_of, stack_of, values.tolist(), strict=True):
        p = out.get(series_id)
        if p is None:
            group = by_series[series_id]
            start, duration = _window(group, q)
            p = out[series_id] = Profile(labels=dict(group[0].series.labels), start_ns=start, duration_ns=duration,
                                         period_ns=_dominant_period(group), sample_type=sample_type, unit=unit)
        p.add(stacks[stack_id], value)
    return sample_type, unit, list(out.values())


def _group_cpu_nanoseconds(sample_type: str, unit: str | None, g: LabelTotals) -> int | None:
    """`cpu_nanoseconds` of a group the store summed."""
    if (sample_type, unit) == ("cpu", "nanoseconds"):
        return g.value
    if (sample_type, unit) == ("samples", "count") and g.has_period:
        return g.value_period_ns
    return None


def cpu_nanoseconds(sample_type: str, unit: str, refs: Sequence[StoredProfile]) -> int | None:
    """CPU time behind these profiles, when the type measures CPU; None otherwise."""
    if (sample_type, unit) == ("cpu", "nanoseconds"):
        return sum(r.total for r in refs)
    if (sample_type, unit) == ("samples", "count") and any(r.period_ns > 0 for r in refs):
        return sum(r.total * r.period_ns for r in refs)
    return None


def series_summary(store: Store, q: Query, by: Sequence[str] | None = None) -> dict:
    """Profiles grouped by the `by` labels (all labels when None), largest first, with CPU time and share.

    Only index metadata is read (each stored profile keeps its total), no sample data, and the store sums
    per group (`Store.totals_by`): a range of short-lived processes is not handed over profile by profile.
    """
    sample_type, unit, groups = store.typed_totals_by(q.selector, q.t0, q.t1, by, type_pick(q))
    seconds = (q.t1 - q.t0) / 1e9
    rows: list[dict[str, Any]] = []
    for g in groups:
        cpu_ns = _group_cpu_nanoseconds(sample_type, unit, g)
        cpu_s = None if cpu_ns is None else cpu_ns / 1e9
        rows.append({"labels": dict(g.labels), "value": g.value, "cpu_seconds": cpu_s,
                     "cpu_share": None if cpu_s is None or seconds <= 0 else cpu_s / seconds})
    rows.sort(key=lambda r: (-r["value"], sorted(r["labels"].items())))
    return {"from": q.t0 / 1e9, "to": q.t1 / 1e9, "type": sample_type, "unit": unit or "count",
            "total": sum(g.value for g in groups), "series": rows}
