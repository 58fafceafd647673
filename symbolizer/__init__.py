"""Symbolization: addresses -> functions, file:line and inlined frames (ELF symbols, DWARF,
kallsyms, perf maps). `Symbolizer` (symbolizer.core) is the agent's entry point.

Names are imported on first use (PEP 562): importing any submodule runs this file first, and
`podflame symbolize` (one short process) must not pay for the agent's whole symbolizer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import podflame  # noqa: F401  (installs the compiled-module finder before any hot module: podflame/compiled.py)

if TYPE_CHECKING:
    from symbolizer.core import UNREADABLE_RETRY_SECONDS, MapsSource, Symbolizer
    from symbolizer.elf import ElfSymbols
    from symbolizer.kallsyms import Kallsyms
    from symbolizer.perfmap import PerfMaps

__all__ = ["UNREADABLE_RETRY_SECONDS", "ElfSymbols", "Kallsyms", "MapsSource", "PerfMaps", "Symbolizer"]

_WHERE = {"Symbolizer": "core", "MapsSource": "core", "UNREADABLE_RETRY_SECONDS": "core", "ElfSymbols": "elf",
          "Kallsyms": "kallsyms", "PerfMaps": "perfmap"}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'symbolizer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"symbolizer.{module}"), name)
    globals()[name] = value
    return value
