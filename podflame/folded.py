"""Folded stacks (`root;...;leaf count`, Brendan Gregg's FlameGraph input): one writer for every caller.

Here, beside the model, because both `podflame record` (the node side) and the server's downloads
write it, and the node side must not import the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from podflame.model import Profile

# What a reader may split a line at (str.splitlines() splits at all of these), and the frame separator.
_UNFOLDABLE = str.maketrans({**{c: " " for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}, ";": ":"})


def folded_name(name: str) -> str:
    """A function name as one frame of one line: line breaks become spaces and `;` a colon (a Java descriptor's
    `Ljava/lang/String;` would otherwise add a frame, a name from an untrusted profile add a line)."""
    return name.translate(_UNFOLDABLE)


def fold(stacks: Iterable[tuple[Sequence[str], Sequence[int]]]) -> dict[str, list[int]]:
    """Folded stack text -> values per column; equal name paths (of different frames) share a line.

    Names must be `folded_name`s (callers make them once per name); empty stacks have no line.
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
    (the format cannot express them). Line breaks and `;` inside names would break the format (`folded_name`).
    """
    return folded_text(fold((tuple(folded_name(n) for n in names), (value,))
                            for names, value in profile.name_stacks()))
