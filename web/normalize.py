"""Wire -> store: a decoded pprof (`podflame.pprof.Decoded`) as the store's `Batch`.

The one place that knows both sides, so the store never imports the wire codec (and a second wire
format would add a function here, not a path into the store). Nothing is copied per sample: the
batch shares the decoded tables and stacks; only each location becomes a frame row with its kind as text.
"""

from __future__ import annotations

from podflame.pprof import Decoded
from web.store.base import Batch, FrameRow, SeriesSamples


def batch_of(decoded: Decoded) -> Batch:
    """The store's rows of a decoded pprof (pprof location ids become frame keys, stacks stay leaf first)."""
    frames: dict[int, FrameRow] = {lid: (address, mapping_id, str(kind), lines)
                                   for lid, (address, mapping_id, kind, lines) in decoded.locations.items()}
    return Batch(decoded.start_ns, decoded.duration_ns, decoded.period_ns, decoded.mappings, decoded.functions,
                 frames, [SeriesSamples(p.labels, p.sample_type, p.unit, p.samples) for p in decoded.decoded])
