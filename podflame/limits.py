"""Bounds on what podflame accepts from outside: sizes, counts, values and times.

One place for the numbers, because the wire decoder (podflame/pprof.py), the server's ingest and its
query parser must agree on them: a time the decoder accepts must be one a query can name, and a total
the decoder accepts must fit the store's int64 columns after compaction sums many of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from podflame.errors import InvalidInput

INT64_MAX = (1 << 63) - 1
# Times are int64 unix nanoseconds (SQLite integers, numpy int64). 2200-01-01T00:00:00Z leaves room for a
# range end plus a step or a block's alignment without reaching 2^63 (2262-04-11).
MAX_TIME_NS = 7_258_118_400 * 1_000_000_000
# A sample value, and a series' total in one push, stay exact as a JSON number in a browser (2^53) and leave
# 1000x headroom before a compacted block (the sum of many pushes) reaches int64.
MAX_VALUE = (1 << 53) - 1


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one pprof push may hold; each is checked before the thing it counts is allocated.

    Server config keys (`config_keys()`): `MAX_` + the field name upper-cased (`MAX_INFLATED_BYTES`,
    `MAX_STRINGS`...), but `INFLATE_RATIO` and `INFLATE_FLOOR`: see `from_config`.
    """

    inflated_bytes: int = 256 << 20  # after gunzip (absolute)
    inflate_ratio: int = 50  # after gunzip, per compressed byte (real pprof: 1-11x, the agent ~3x) ...
    inflate_floor: int = 1 << 20  # ... except that any body may inflate to this much
    strings: int = 1_000_000  # string_table entries
    string_bytes: int = 64 << 20  # string_table bytes in all
    label_value_bytes: int = 4096  # one label's value
    samples: int = 500_000  # 1-location samples: ~160 B each once parsed (500k: ~80 MB)
    locations: int = 500_000
    functions: int = 500_000
    mappings: int = 500_000
    top_fields: int = 4_000_000  # top-level fields of any kind (a repeated scalar is cheap to repeat)
    labels_per_sample: int = 64
    series: int = 20_000  # distinct label sets (x sample types) per push
    value: int = MAX_VALUE  # one sample value, and a series' sum in one push
    time_ns: int = MAX_TIME_NS  # time_nanos, and time_nanos + duration_nanos

    def inflate_cap(self, compressed: int) -> int:
        """How many bytes a body of `compressed` bytes may inflate to."""
        return min(self.inflated_bytes, max(self.inflate_floor, self.inflate_ratio * compressed))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> DecodeLimits:
        """Limits from a server config (a Flask `app.config`): `MAX_STRINGS=10_000` sets `strings`; the
        environment (`PODFLAME_MAX_STRINGS=10000`) sets what the config does not."""
        env = os.environ if environ is None else environ
        given: dict[str, int] = {}
        for f in fields(cls):
            key = f.name.upper() if f.name.startswith(("max_", "inflate_")) else f"MAX_{f.name.upper()}"
            if config.get(key) is not None:
                given[f.name] = positive_int(key, config[key])
            elif env.get(f"PODFLAME_{key}"):
                given[f.name] = positive_int(f"PODFLAME_{key}", env[f"PODFLAME_{key}"])
        return replace(cls(), **given)

    @classmethod
    def config_keys(cls) -> list[str]:
        return [f.name.upper() if f.name.startswith(("max_", "inflate_")) else f"MAX_{f.name.upper()}"
                for f in fields(cls)]


DEFAULT_LIMITS = DecodeLimits()


def positive_int(name: str, value: object) -> int:
    """A limit's setting as an integer of at least 1, or InvalidInput naming the setting (checked when the
    server starts: a typo in an environment variable must not become a 500 at every ingest)."""
    try:
        number = int(str(value).replace("_", "")) if not isinstance(value, int) else value
    except ValueError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise InvalidInput(f"{name}={value!r}: expected a whole number of at least 1")
    return number
