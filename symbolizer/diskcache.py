"""Decoded DWARF indexes persisted per build id, so a restarted agent does not decode again.

Layout: `<root>/v<FORMAT>/<build id[:2]>/<build id>/table.pkl` (the CU address table),
`symbols.pkl` (the ELF symbol table with its format, `elf.SYMBOLS_FORMAT`, for `podflame symbolize` and
the agent), `cu-<offset>.pkl` (one compile
unit: decoded whole, `dwarf.CuIndex`, or for a big CU its functions' ranges, `dwarf.CuFunctions`)
and `fn-<CU offset>-<DIE offset>.pkl` (one function of a big CU, `dwarf.FnIndex`: its inline tree
and line rows, stored when a lookup first reaches it). A big CU whose functions a process reached
enough of is decoded whole: its `cu-<offset>.pkl` becomes a `dwarf.CuIndex` and its `fn-` entries
are removed (the same layout: an entry read by an older v3 reader is one it knows). All flat arrays,
loaded in well under a millisecond.
A build id names exactly one binary, so entries never go stale; files are written to a
temporary name and renamed, so a crash leaves no torn file, and a file that fails to load is
ignored (decoded again and rewritten). The total size is bounded: past `max_bytes`, whole build
ids are dropped, least recently used first (by directory mtime, touched on use).

The files are pickles: the directory must be writable only by the agent (root), like its binary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from symbolizer.dwarf import _FORMAT, CuFunctions, CuIndex, FnIndex
from symbolizer.elf import SYMBOLS_FORMAT
from symbolizer.ranges import AddressRanges

if TYPE_CHECKING:
    from symbolizer.elf import ElfSymbols

log = logging.getLogger("podflame.symbolizer")

CuTable = tuple[list[tuple[int, int, int]], bool]
_WITHOUT_DEBUG_FILE = ("dynsym", "minidebuginfo")  # ElfSymbols.symbol_source of tables read from the binary alone


class DiskCache:
    def __init__(self, root: str, *, max_bytes: int = 512 << 20) -> None:
        self.root = os.path.join(root, f"v{_FORMAT}")
        self.max_bytes = max_bytes
        self._stores = 0
        self.stats = {"cu_hits": 0, "cu_misses": 0, "cu_stored": 0, "fn_hits": 0, "fn_misses": 0, "fn_stored": 0,
                      "fn_dropped": 0, "table_hits": 0, "symbols_hits": 0, "evicted": 0, "errors": 0}

    def _dir(self, build_id: str) -> str:
        safe = "".join(c for c in build_id.lower() if c in "0123456789abcdef")
        return os.path.join(self.root, safe[:2], safe)

    # -- entries -----------------------------------------------------------------------------

    def _read(self, path: str) -> object | None:
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception as e:  # truncated, corrupt, written by something else: decoded again and rewritten
            self.stats["errors"] += 1
            log.warning("symbol cache: cannot load %s (%s: %s): reading the binary again, the entry is rewritten",
                        path, type(e).__name__, e)
            return None

    def _write(self, path: str, value: object) -> None:
        d = os.path.dirname(path)
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except OSError:
            self.stats["errors"] += 1
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            return
        self._stores += 1
        if self._stores % 64 == 1:
            self.trim()

    def load_table(self, build_id: str) -> CuTable | None:
        d = self._dir(build_id)
        got = self._read(os.path.join(d, "table.pkl"))
        if got is None:
            return None
        self.stats["table_hits"] += 1
        with contextlib.suppress(OSError):
            os.utime(d)
        return cast("CuTable", got)  # what save_table pickled under this build id

    def store_table(self, build_id: str, table: CuTable) -> None:
        self._write(os.path.join(self._dir(build_id), "table.pkl"), table)

    def load_cu(self, build_id: str, offset: int) -> CuIndex | CuFunctions | None:
        got = self._read(os.path.join(self._dir(build_id), f"cu-{offset:x}.pkl"))
        if isinstance(got, (CuIndex, CuFunctions)):
            self.stats["cu_hits"] += 1
            return got
        self.stats["cu_misses"] += 1
        return None

    def store_cu(self, build_id: str, offset: int, idx: CuIndex | CuFunctions) -> None:
        self._write(os.path.join(self._dir(build_id), f"cu-{offset:x}.pkl"), idx)
        self.stats["cu_stored"] += 1

    def load_fn(self, build_id: str, offset: int, die: int) -> FnIndex | None:
        got = self._read(os.path.join(self._dir(build_id), f"fn-{offset:x}-{die:x}.pkl"))
        if isinstance(got, FnIndex):
            self.stats["fn_hits"] += 1
            return got
        self.stats["fn_misses"] += 1
        return None

    def store_fn(self, build_id: str, offset: int, die: int, fn: FnIndex) -> None:
        self._write(os.path.join(self._dir(build_id), f"fn-{offset:x}-{die:x}.pkl"), fn)
        self.stats["fn_stored"] += 1

    def drop_fns(self, build_id: str, offset: int) -> None:
        """Remove the function entries of one CU (it is stored whole now: they would never be read)."""
        prefix = f"fn-{offset:x}-"
        try:
            with os.scandir(self._dir(build_id)) as it:
                names = [e.name for e in it if e.name.startswith(prefix)]
        except OSError:
            return
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._dir(build_id), name))
                self.stats["fn_dropped"] += 1

    def symbols_loader(self, elf: ElfSymbols,
                       key: str | None = None) -> Callable[[Callable[[], AddressRanges]], AddressRanges]:
        """For ElfSymbols.load_symbols: the binary's symbol table from the cache, else read and stored.

        A table is what the build id's bytes hold (.symtab, .dynsym, MiniDebugInfo) or its debug file
        (named by the build id too), so it never goes stale, with one exception: a table read without a
        debug file is not used once a debug file is there (installed, or fetched by debuginfod).
        `key`: for a binary without a build id, `ElfSymbols.table_digest()` (its tables' own bytes)."""
        name = key or elf.build_id
        assert name
        path = os.path.join(self._dir(name), "symbols.pkl")

        def load(read: Callable[[], AddressRanges]) -> AddressRanges:
            got = self._read(path)
            # (format, source, table); a table of another format (an older reader's: no `name@plt`, or a
            # bare (source, table) pair) is read again from the binary and rewritten
            if isinstance(got, tuple) and len(got) == 3 and got[0] == SYMBOLS_FORMAT and \
                    isinstance(got[2], AddressRanges):
                _, source, ranges = got
                if source not in _WITHOUT_DEBUG_FILE or elf.debug_file() is None:
                    self.stats["symbols_hits"] += 1
                    elf.symbol_source = f"cache ({source})"
                    return ranges
            ranges = read()
            self._write(path, (SYMBOLS_FORMAT, elf.symbol_source, ranges))
            return ranges

        return load

    def hooks(self, build_id: str) -> dict[str, Any]:
        """Keyword arguments for DwarfInfo bound to one build id."""
        return {"load_cu": lambda off: self.load_cu(build_id, off),
                "store_cu": lambda off, idx: self.store_cu(build_id, off, idx),
                "load_fn": lambda off, die: self.load_fn(build_id, off, die),
                "store_fn": lambda off, die, fn: self.store_fn(build_id, off, die, fn),
                "drop_fns": lambda off: self.drop_fns(build_id, off),
                "cu_table": self.load_table(build_id),
                "store_table": lambda table: self.store_table(build_id, table)}

    # -- bound -------------------------------------------------------------------------------

    def usage(self) -> list[tuple[float, int, str]]:
        """(mtime, bytes, dir) per build id."""
        out: list[tuple[float, int, str]] = []
        if not os.path.isdir(self.root):
            return out
        for prefix in os.scandir(self.root):
            if not prefix.is_dir():
                continue
            for entry in os.scandir(prefix.path):
                try:
                    size = sum(f.stat().st_size for f in os.scandir(entry.path))
                    out.append((entry.stat().st_mtime, size, entry.path))
                except OSError:
                    continue
        return out

    def trim(self) -> None:
        entries = sorted(self.usage())
        total = sum(e[1] for e in entries)
        now = time.time()
        for mtime, size, path in entries:
            if total <= self.max_bytes:
                break
            if now - mtime < 1 and len(entries) == 1:
                break  # never drop the one being written
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            self.stats["evicted"] += 1
