"""speedscope JSON (https://www.speedscope.app/file-format-schema.json): one sampled profile per query.

speedscope opens a file offline in the browser and adds views our page lacks (left-heavy,
sandwich); the sampled format is exactly our merged data: shared frames, root-first stacks of
frame indices, and one weight per stack.
"""

from __future__ import annotations

from typing import Any

from web.query.stacks import NameStacks

SCHEMA = "https://www.speedscope.app/file-format-schema.json"
_UNITS = {"nanoseconds": "nanoseconds", "microseconds": "microseconds", "milliseconds": "milliseconds",
          "seconds": "seconds", "bytes": "bytes"}


def speedscope_from_stacks(ns: NameStacks, name: str, unit: str) -> dict[str, Any]:
    """One sampled profile; frames are the names used, in first-use order, each once."""
    used: dict[int, int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    flat = ns.flat.tolist()
    for off, length, value in zip(ns.offsets.tolist(), ns.lengths.tolist(), ns.values[:, 0].tolist(),
                                  strict=True):
        if not value:
            continue
        samples.append([used.setdefault(i, len(used)) for i in flat[off:off + length]])
        weights.append(value)
    frames = [{"name": ns.names[i]} for i in used]
    total = sum(weights)
    return {
        "$schema": SCHEMA,
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": _UNITS.get(unit, "none"), "startValue": 0,
                      "endValue": total, "samples": samples, "weights": weights}],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "podflame",
    }
