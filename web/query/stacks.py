"""`NameStacks`: the one stacks type every renderer takes (flame graph, diff, folded, speedscope).

Distinct stacks as function-name ids with value columns, as numpy arrays: what a merge of stored
profiles produces (web/query/merge.py) without building a Profile or a Frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class NameStacks:
    """Distinct stacks as name ids (root first) with one or more value columns.

    `flat` holds every stack's name ids back to back; stack i is `flat[offsets[i]:offsets[i]+lengths[i]]`.
    `values` has shape (stacks, columns): one column for a flame graph, two (baseline, comparison) for a diff.
    """

    names: Sequence[str]
    flat: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    values: np.ndarray

    @staticmethod
    def from_lists(names: Sequence[str], paths: Sequence[Sequence[int]], values: np.ndarray,
                   columns: int = 1) -> NameStacks:
        lengths = np.fromiter((len(p) for p in paths), dtype=np.int64, count=len(paths))
        flat = (np.fromiter((i for p in paths for i in p), dtype=np.int64, count=int(lengths.sum()))
                if len(paths) else np.empty(0, np.int64))
        offsets = np.cumsum(lengths) - lengths
        vals = np.asarray(values, dtype=np.int64)
        return NameStacks(names, flat, offsets, lengths, vals.reshape(len(paths), columns))
