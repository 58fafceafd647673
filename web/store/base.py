"""What query code may rely on, whatever the backend: the `Store` interface and the types it takes and gives.

A store takes `Batch`es, not wire types: `web.normalize` turns a decoded pprof into one, so the store
never imports the pprof codec. It gives metadata (`StoredProfile`), integer columns (`Columns`) and,
by id, stacks and frames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from podflame.errors import PodflameError, Unavailable
from podflame.model import Frame, Stack
from podflame.model import Mapping as ProcMapping
from web.store.selector import Selector


class StoreClosed(Unavailable):
    """The store was closed (the server is shutting down): nothing more is read or written."""


class StoreTooNew(PodflameError, RuntimeError):
    """The data directory was written by a newer podflame, whose schema this one does not know."""


# The query layer's choice of a (sample type, unit) among those in range (web/query/merge.py `type_pick`); the unit
# is None when nothing of the chosen type is in range.
TypePick = Callable[[Sequence[tuple[str, str]]], tuple[str, str | None]]
# A frame's (kind, mapping path or "", file of its innermost line that has one or "").
FrameOrigin = tuple[str, str, str]
# A frame as ingest gives it: (address, mapping key, kind, [(function key, line), ...] innermost first).
FrameRow = tuple[int, int, str, Sequence[tuple[int, int]]]


@dataclass(frozen=True, slots=True)
class SeriesSamples:
    """One label set of one sample type in a batch: stacks of frame keys (leaf first, as profilers record
    them) -> value."""

    labels: Mapping[str, str]
    sample_type: str
    unit: str
    samples: Mapping[tuple[int, ...], int]


@dataclass(frozen=True, slots=True)
class Batch:
    """One ingest's profiles as tables keyed by the sender's small integers (the only write path's input).

    Every key a frame or stack names is in its table: the normalizer checked that. Mapping key 0 or a key
    mapped to None is no mapping (the kernel).
    """

    start_ns: int
    duration_ns: int
    period_ns: int
    mappings: Mapping[int, ProcMapping | None]
    functions: Mapping[int, tuple[str, str | None]]  # key -> (name, file)
    frames: Mapping[int, FrameRow]
    series: Sequence[SeriesSamples]




@dataclass(frozen=True, slots=True)
class Series:
    """One label set of one sample type: the unit that selectors match."""

    id: int
    labels: Mapping[str, str]
    sample_type: str
    unit: str


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """Metadata of one stored profile; `handle` is opaque, for the backend's `read`."""

    series: Series
    start_ns: int
    duration_ns: int
    period_ns: int
    total: int
    handle: object


@dataclass(frozen=True, slots=True)
class Columns:
    """Samples as parallel integer arrays: `profile` indexes the list given to `read`."""

    profile: np.ndarray
    stack: np.ndarray
    value: np.ndarray


@dataclass(frozen=True, slots=True)
class StepTotals:
    """Profile totals summed per time step [t0 + k*step, t0 + (k+1)*step), per sampling period.

    Kept per period so that CPU time (period x count) stays exact when periods differ. `refs` are
    the stored profiles or blocks the sums came from (for units and labels, not to be re-read), or
    empty: a backend that sums per step in its engine gives none, so that a range of short-lived
    processes (a series each) is not handed over ref by ref. No caller may need them.
    """

    refs: list[StoredProfile]
    by_period: dict[int, np.ndarray]  # period_ns -> int64 sums, one per step


@dataclass(frozen=True, slots=True)
class LabelTotals:
    """The totals of the profiles whose series agree on some labels (a row of the pod list)."""

    labels: Mapping[str, str]  # the grouping labels these series have
    value: int  # sum of the profiles' totals
    value_period_ns: int  # sum of total x period_ns: the CPU nanoseconds behind sampled counts
    has_period: bool  # some profile has a sampling period (else CPU time is unknown)


@dataclass(frozen=True, slots=True)
class PutResult:
    profiles: int
    samples: int
    bytes: int


@dataclass(frozen=True, slots=True)
class RetentionResult:
    cutoff_ns: int  # everything that started before this is gone (0: nothing was cut)
    profiles: int  # rows deleted (raw profiles and pre-aggregated blocks)
    files: int  # blob files unlinked (after their grace period)
    bytes_used: int  # blob bytes + used index pages, after the pass


class Store(ABC):
    """What the server needs from storage; backends must be safe to call from many threads."""

    @abstractmethod
    def put(self, batches: Sequence[Batch]) -> PutResult:
        """Store batches atomically: all are durable when this returns, none if it raises."""

    @abstractmethod
    def select(self, selector: Selector, t0: int, t1: int, sample_type: str | None = None,
               unit: str | None = None, *, align_ns: int | None = None,
               max_level: int | None = None) -> list[StoredProfile]:
        """Profiles whose series matches and whose start lies in [t0, t1), oldest first.

        A backend may answer with pre-aggregated blocks that sum exactly the profiles they replace;
        with `align_ns` none crosses a boundary t0 + k * align_ns, `max_level` caps their coarseness
        (0: raw profiles only).
        """

    def select_summed(self, selector: Selector, t0: int, t1: int, sample_type: str | None = None,
                      unit: str | None = None, *, keep: Collection[str] | None = (), align_ns: int | None = None,
                      max_level: int | None = None) -> list[StoredProfile]:
        """`select` for a caller that needs of each ref's labels only those in `keep` (None: all): a flame graph
        needs none, a pod list `pod`. A backend may then answer with refs that each sum several series agreeing
        on those labels (a ref's series has the labels they share); the samples and totals are the same.
        This default is `select`."""
        return self.select(selector, t0, t1, sample_type, unit, align_ns=align_ns, max_level=max_level)

    def totals_by(self, selector: Selector, t0: int, t1: int, by: Sequence[str] | None,
                  sample_type: str | None = None, unit: str | None = None) -> list[LabelTotals]:
        """Totals of the profiles `select` would give, summed per value of the `by` labels (per series' whole
        label set when None; series lacking some of them sum with the others lacking the same), unordered.
        Metadata only. This default groups `select_summed`'s refs; a backend that can sum in its engine
        overrides it, so a range of short-lived processes is not handed over ref by ref."""
        refs = (self.select(selector, t0, t1, sample_type, unit) if by is None
                else self.select_summed(selector, t0, t1, sample_type, unit, keep=by))
        return label_totals(((r.series.labels, r.total, r.period_ns) for r in refs), by)

    @abstractmethod
    def read(self, profiles: Sequence[StoredProfile]) -> Columns:
        """The samples of these profiles, as columns."""

    def read_merged(self, profiles: Sequence[StoredProfile]) -> tuple[np.ndarray, np.ndarray]:
        """These profiles' samples summed per stack id: (distinct ids ascending, exact sums). A backend whose
        engine can sum (ClickHouse: GROUP BY stack) overrides it, so a wide merge is not read row by row."""
        from web.store.columns import group_sum

        cols = self.read(profiles)
        return group_sum(cols.stack, cols.value)

    def step_totals(self, selector: Selector, t0: int, t1: int, step_ns: int, sample_type: str | None = None,
                    unit: str | None = None) -> StepTotals:
        """Totals per step from metadata only (no sample data). This default uses blocks that fit in a step."""
        refs = self.select(selector, t0, t1, sample_type, unit, align_ns=step_ns)
        n = -(-(t1 - t0) // step_ns)
        by_period: dict[int, np.ndarray] = {}
        for r in refs:
            sums = by_period.get(r.period_ns)
            if sums is None:
                sums = by_period[r.period_ns] = np.zeros(n, dtype=np.int64)
            sums[(r.start_ns - t0) // step_ns] += r.total
        return StepTotals(refs, by_period)

    def picked_type(self, selector: Selector, t0: int, t1: int, pick: TypePick) -> tuple[str, str | None]:
        """`pick` over the types of the selector's series in range, else (it matches nothing) of the whole range."""
        return pick(self.types(t0, t1, selector) or self.types(t0, t1))

    def typed_step_totals(self, selector: Selector, t0: int, t1: int, step_ns: int, pick: TypePick
                          ) -> tuple[str, str | None, StepTotals]:
        """The type `pick` chooses (`picked_type`) and its `step_totals`: what a CPU chart asks. This default asks
        `types` first; a backend where each statement has a cost floor (ClickHouse: a round trip, planning and a
        table read) answers both from one statement."""
        sample_type, unit = self.picked_type(selector, t0, t1, pick)
        return sample_type, unit, self.step_totals(selector, t0, t1, step_ns, sample_type, unit)

    def typed_select_summed(self, selector: Selector, t0: int, t1: int, pick: TypePick,
                            keep: Collection[str] | None = ()) -> tuple[str, str | None, list[StoredProfile]]:
        """The type `pick` chooses (`picked_type`) and its `select_summed`: what a flame graph asks before it reads the
        refs' samples. This default asks `types` first; a backend where each statement has a cost floor may answer
        both, and have the samples ready for the `read_merged` that follows, from one statement."""
        sample_type, unit = self.picked_type(selector, t0, t1, pick)
        return sample_type, unit, self.select_summed(selector, t0, t1, sample_type, unit, keep=keep)

    def typed_totals_by(self, selector: Selector, t0: int, t1: int, by: Sequence[str] | None, pick: TypePick
                        ) -> tuple[str, str | None, list[LabelTotals]]:
        """The type `pick` chooses (`picked_type`) and its `totals_by`: what the pod list asks; as `typed_step_totals`,
        a backend may answer both from one statement."""
        sample_type, unit = self.picked_type(selector, t0, t1, pick)
        return sample_type, unit, self.totals_by(selector, t0, t1, by, sample_type, unit)

    @abstractmethod
    def stacks(self, ids: Iterable[int]) -> dict[int, Stack]:
        """Stack ids (from `read`) -> root-first frames."""

    def stack_frames(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Stacks as frame ids: (frames per stack, the frame ids root first, stacks back to back), in `ids` order.

        Frame ids are stable for the store's life, so callers can cache work per frame (names,
        locations) instead of hashing Frame objects per stack. This default numbers the frames of
        `stacks()` itself; a backend with its own frame table returns its ids.
        """
        numbering: dict[Frame, int] = self.__dict__.setdefault("_default_frame_numbers", {})
        by_id: dict[int, Frame] = self.__dict__.setdefault("_default_frames", {})
        stacks = self.stacks(ids)
        flat: list[int] = []
        for sid in ids:
            for f in stacks[sid]:
                fid = numbering.setdefault(f, len(numbering))
                by_id[fid] = f
                flat.append(fid)
        lengths = np.fromiter((len(stacks[i]) for i in ids), dtype=np.int64, count=len(ids))
        return lengths, np.array(flat, dtype=np.int64)

    def frame_lines(self, frame_ids: Iterable[int]) -> dict[int, tuple[tuple[str, str | None, int | None], ...]]:
        """Frame id (from `stack_frames`) -> (function, file, line) outermost first, what a stack shows of it:
        `Frame.names()` with each name's source position; an unsymbolized frame is its fallback name alone."""
        frames: dict[int, Frame] = self.__dict__.get("_default_frames", {})
        return {i: frame_lines_of(frames[i]) for i in frame_ids}

    # True when a StoredProfile from `select` names data that never changes (the same refs read the same
    # samples): then a query's result may be cached under its refs (web/query/treecache.py).
    immutable_refs = False

    def generation(self) -> Hashable | None:
        """A value that changes whenever stored data may have changed (any write, compaction or deletion), so
        an answer kept for an absolute range stays exact while it is unchanged; None: the backend cannot tell."""
        return None

    def frame_origins(self, frame_ids: Iterable[int]) -> dict[int, FrameOrigin] | None:
        """Frame id (from `stack_frames`) -> (kind, mapping path, file of its innermost line that has one),
        what colour by kind and by module need, without building Frames; None when the backend cannot tell
        (the query layer then reads kinds through `stacks`, a bounded number per query).
        This default answers for frames that the default `stack_frames` numbered."""
        frames: dict[int, Frame] = self.__dict__.get("_default_frames", {})
        want = list(frame_ids)
        if not all(i in frames for i in want):
            return None
        return {i: frame_origin_of(frames[i]) for i in want}

    @abstractmethod
    def label_names(self, t0: int, t1: int, selector: Selector | None = None) -> list[str]: ...

    @abstractmethod
    def label_values(self, name: str, t0: int, t1: int, selector: Selector | None = None) -> list[str]: ...

    def label_values_page(self, name: str, t0: int, t1: int, selector: Selector | None = None, prefix: str = "",
                          limit: int | None = None) -> tuple[list[str], bool]:
        """The first `limit` sorted values that start with `prefix` (autocomplete), and whether more were cut.
        This default filters `label_values`; a backend with a value index narrows before looking at series."""
        values = [v for v in self.label_values(name, t0, t1, selector) if v.startswith(prefix)]
        return (values[:limit], len(values) > limit) if limit is not None else (values, False)

    @abstractmethod
    def types(self, t0: int, t1: int, selector: Selector | None = None) -> list[tuple[str, str]]:
        """(sample type, unit) pairs with data in the range, sorted."""

    def compact(self, now_ns: int | None = None, max_buckets: int = 64) -> int:
        """Pre-aggregate aged buckets; returns how many were written. Backends may not pre-aggregate."""
        return 0

    def enforce_retention(self, max_age_ns: int | None, max_bytes: int | None,
                          now_ns: int | None = None) -> RetentionResult:
        """Delete the oldest data past a time limit or over a disk budget, without blocking writers."""
        return RetentionResult(0, 0, 0, 0)

    @property
    def closed(self) -> bool:
        return False

    def check_ready(self) -> None:
        """Raise Unavailable (StoreClosed...) unless the store is open and a write could start now."""
        self.types(0, 1)

    @abstractmethod
    def close(self) -> None: ...



def label_totals(parts: Iterable[tuple[Mapping[str, str], int, int]], by: Sequence[str] | None) -> list[LabelTotals]:
    """(series labels, total, period_ns) parts summed per value of the `by` labels (`Store.totals_by`)."""
    acc: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for labels, total, period in parts:
        key = tuple(sorted(labels.items())) if by is None else tuple((k, labels[k]) for k in by if k in labels)
        a = acc.get(key)
        if a is None:
            a = acc[key] = [0, 0, 0]
        a[0] += total
        a[1] += total * period
        a[2] |= period > 0
    return [LabelTotals(dict(k), v, vp, bool(hp)) for k, (v, vp, hp) in acc.items()]


def frame_origin_of(f: Frame) -> FrameOrigin:
    path = f.mapping.path if f.mapping is not None else ""
    return (str(f.kind), path, next((ln.file for ln in f.lines if ln.file), ""))


def frame_lines_of(f: Frame) -> tuple[tuple[str, str | None, int | None], ...]:
    if not f.lines:
        return ((f.fallback_name(), None, None),)
    return tuple((ln.function, ln.file, ln.line) for ln in reversed(f.lines))
