"""Downloads: profiles rendered as pprof (for `go tool pprof`) or folded stacks (for FlameGraph tools).

Renderers are pure functions of `Profile`s, so the CLI (`podflame record`) and the HTTP
layer share them.
"""

from __future__ import annotations

from collections.abc import Sequence

from podflame import pprof
from podflame.model import Profile


def to_folded(profile: Profile) -> str:
    """One line per distinct function-name stack, `root;...;leaf count`, sorted by stack.

    Different frames that resolve to the same names share a line. Empty stacks have no line
    (the format cannot express them). Newlines inside names would break the format: they become spaces.
    """
    totals: dict[tuple[str, ...], int] = {}
    for names, value in profile.name_stacks():
        if names:
            totals[names] = totals.get(names, 0) + value
    lines = [";".join(n.replace("\n", " ") for n in names) + f" {value}"
             for names, value in sorted(totals.items()) if value]
    return "".join(line + "\n" for line in lines)


def to_pprof(profiles: Sequence[Profile], sample_type: str = "samples", unit: str = "count",
             period_ns: int = 0) -> bytes:
    """Gzip pprof of profiles of one sample type; each sample carries its profile's labels.

    With no profiles the result is still a valid, empty pprof of the requested type.
    """
    if not profiles:
        profiles = [Profile(labels={}, start_ns=0, duration_ns=0, period_ns=period_ns,
                            sample_type=sample_type, unit=unit)]
    return pprof.encode(profiles)
