"""Downloads: profiles rendered as pprof (for `go tool pprof`) or folded stacks (for FlameGraph tools).

Renderers are pure functions of merged name stacks (or of `Profile`s for pprof); the folded writer
itself is podflame/folded.py, which `podflame record` uses too.
"""

from __future__ import annotations

from collections.abc import Sequence

from podflame import pprof
from podflame.folded import fold, folded_name, folded_text
from podflame.model import Profile
from web.query.stacks import NameStacks


def _folded_totals(ns: NameStacks) -> dict[str, list[int]]:
    """Folded stack text -> values per column; equal name paths of different frames share a line."""
    names = [folded_name(n) for n in ns.names]
    flat = ns.flat.tolist()
    return fold(([names[i] for i in flat[off:off + length]], values)
                for off, length, values in zip(ns.offsets.tolist(), ns.lengths.tolist(), ns.values.tolist(),
                                               strict=True))


def folded_from_stacks(ns: NameStacks) -> str:
    """One line per distinct function-name stack, `root;...;leaf count`, sorted by stack."""
    return folded_text(_folded_totals(ns))


def folded_diff_from_stacks(ns: NameStacks, normalize: bool = False) -> str:
    """Two-column folded stacks, `stack base comp`, as FlameGraph's difffolded.pl writes them.

    With `normalize`, baseline counts are scaled to the comparison's total and rounded (difffolded -n),
    so flamegraph.pl's red/blue shows changes of shape rather than of size.
    """
    totals = _folded_totals(ns)
    base_total, comp_total = (int(x) for x in ns.values.sum(axis=0)) if ns.values.size else (0, 0)
    scale = comp_total / base_total if normalize and base_total else 1.0
    lines = []
    for k, (b, c) in sorted(totals.items()):
        b = int(b * scale + 0.5)  # half up, not to even
        if b or c:
            lines.append(f"{k} {b} {c}\n")
    return "".join(lines)


def to_pprof(profiles: Sequence[Profile], sample_type: str = "samples", unit: str = "count",
             period_ns: int = 0) -> bytes:
    """Gzip pprof of profiles of one sample type; each sample carries its profile's labels.

    With no profiles the result is still a valid, empty pprof of the requested type.
    """
    if not profiles:
        profiles = [Profile(labels={}, start_ns=0, duration_ns=0, period_ns=period_ns,
                            sample_type=sample_type, unit=unit)]
    return pprof.encode(profiles)
