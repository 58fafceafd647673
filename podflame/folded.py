"""Folded stacks (`root;...;leaf count`, Brendan Gregg's FlameGraph input): one writer for every caller.

Here, beside the model, because both `podflame record` (the node side) and the server's downloads
write it, and the node side must not import the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from podflame.model import Profile


def fold(stacks: Iterable[tuple[Sequence[str], Sequence[int]]]) -> dict[str, list[int]]:
    """Folded stack text -> values per column; equal name paths (of different frames) share a line.

    Names must not hold newlines (callers replace them once per name); empty stacks have no line.
    """
    out: dict[str, list[int]] = {}
    for names, values in stacks:
        if not names:
            continue
        key = ";".join(names)
        row = out.get(key)
        if row is None:
            out[key] = list(values)
        else:
            for j, v in enumerate(values):
                row[j] += v
    return out


def folded_text(totals: dict[str, list[int]]) -> str:
    """One line per stack with a nonzero first column, sorted by stack."""
    return "".join(f"{k} {v[0]}\n" for k, v in sorted(totals.items()) if v[0])


def to_folded(profile: Profile) -> str:
    """One line per distinct function-name stack, `root;...;leaf count`, sorted by stack.

    Different frames that resolve to the same names share a line. Empty stacks have no line
    (the format cannot express them). Newlines inside names would break the format: they become spaces.
    """
    return folded_text(fold((tuple(n.replace("\n", " ") for n in names), (value,))
                            for names, value in profile.name_stacks()))
