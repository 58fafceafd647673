"""The `podflame` console script: `podflame symbolize` without importing click or podflame/cli.py.

`podflame symbolize` is a short process per batch of addresses (what bench/symbolize.py times
against addr2line), and click plus the CLI module are ~20 ms of its ~70 ms start-up. This parses
the command's well-formed argument lists itself; anything else (help, other commands, group options,
unknown or malformed options, a missing or unreadable --binary, bad addresses) goes to the click CLI,
so help, error messages and exit codes stay the click command's own.
"""

from __future__ import annotations

import os
import sys


def _symbolize_args(args: list[str]) -> tuple[str, bool, str | None, list[str]] | None:
    """(binary, inlines, cache_dir, addresses) as click would parse them, or None to let click do it."""
    binary: str | None = None
    cache_dir: str | None = None
    inlines = False
    addresses: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            addresses += args[i:]
            break
        if a == "--inlines":
            inlines = True
        elif a in ("--binary", "--cache-dir") or a.startswith(("--binary=", "--cache-dir=")):
            name, eq, value = a.partition("=")
            if not eq:
                if i == len(args) or args[i].startswith("-"):
                    return None
                value, i = args[i], i + 1
            if name == "--binary":
                binary = value
            else:
                cache_dir = value
        elif a.startswith("-") and a != "-":
            return None  # -h, --help, unknown options: click's messages
        else:
            addresses.append(a)
    if not binary or not os.path.isfile(binary) or not os.access(binary, os.R_OK):
        return None  # click.Path(exists=True, dir_okay=False) explains
    if cache_dir is not None and (not cache_dir or os.path.isfile(cache_dir)):
        return None  # click.Path(file_okay=False) explains
    return binary, inlines, cache_dir, addresses


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["symbolize"] and (parsed := _symbolize_args(argv[1:])) is not None:
        from symbolizer.elf import ElfReadError
        from symbolizer.tool import symbolize_text

        binary, inlines, cache_dir, addresses = parsed
        text = None if addresses else sys.stdin.read()
        try:
            out = symbolize_text(binary, addresses if text is None else text.split(), inlines=inlines,
                                 cache_dir=cache_dir)
        except (ValueError, ElfReadError):
            # bad addresses or an unreadable ELF: click reports it (and reads stdin's text again)
            if text is not None:
                import io

                sys.stdin = io.StringIO(text)
        else:
            sys.stdout.write(out)
            sys.stdout.flush()
            return
    from podflame.cli import main as cli

    cli()
