"""Unwind tables on disk, so each binary's CFI is parsed once per node, not once per agent start.

Layout: `<root>/unwind/v<FORMAT>/<key[-2:]>/<key>.tbl` beside the symbol cache (root defaults to
$PODFLAME_SYMBOL_CACHE). The key is the build id (it names exactly one binary, so an entry never
goes stale), else a hash of what the build reads (build.cfi_digest: the headers and the CFI's bytes), so
that byte-identical copies of a library without a build id (protobuf's upb module, numpy's OpenBLAS: one
copy per virtualenv or image layer) share one build, where each copy used to be built and stored on its
own; a rebuilt binary whose CFI moved gets a new key. A file without section headers, or whose rows rest
on bytes outside its CFI (indirect pointers), is keyed by its identity (device, inode, size, mtime_ns)
as before. An ELF image without a file (the vDSO, read from a process's memory) is keyed
by a hash of its bytes: every agent start used to build it again, and so start a build child for it.
Entries are written to a temporary name and renamed (a crash leaves no torn file) and carry a checksum:
an entry that does not verify is rebuilt and rewritten. Not pickles: the agent reads these files as
plain bytes. The total is bounded by `max_bytes`, least recently used entries (by mtime, touched on use)
dropped first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
import zlib
from collections.abc import Callable

from profiler.unwind.build import cfi_digest
from profiler.unwind.table import ROW_SIZE, UnwindTable, file_identity
from symbolizer.elf import elf_build_id
from symbolizer.elffile import ElfFile, ElfFormatError

# 6: the row before Go's systemstack_switch (format 5 lacked it); 5: CFA_GO_SWITCH rows (Go's
# asmcgocall); 4: CFA_DEREF rows and RBP_AT_RBP (stack realignment through DRAP); 3: a signal FDE holds one byte
# past its end; 2: CFA_LEAF_REG rows (CFA or RA in a register)
FORMAT = 6
_MAGIC = b"PFUNWIND"
_HEAD = struct.Struct("<8sIIIHH")  # magic, format, count, crc32(rows), len(source), len(reason)


def encode(table: UnwindTable) -> bytes:
    source, reason = table.source.encode(), table.reason.encode()[:0xFFFF]
    head = _HEAD.pack(_MAGIC, FORMAT, table.count, zlib.crc32(table.rows), len(source), len(reason))
    return head + source + reason + table.rows


def decode(raw: bytes, build_id: str | None, identity: tuple[int, int, int, int] | None) -> UnwindTable | None:
    """The table in a cache file's bytes, or None when they are not a whole, intact entry."""
    if len(raw) < _HEAD.size:
        return None
    magic, fmt, count, crc, nsource, nreason = _HEAD.unpack_from(raw)
    pos = _HEAD.size + nsource + nreason
    rows = raw[pos:]
    if magic != _MAGIC or fmt != FORMAT or len(rows) != count * ROW_SIZE or zlib.crc32(rows) != crc:
        return None
    try:
        source = raw[_HEAD.size:_HEAD.size + nsource].decode()
        reason = raw[_HEAD.size + nsource:pos].decode()
    except UnicodeDecodeError:
        return None
    return UnwindTable(rows, count, source, build_id, identity, reason=reason)


def _build_table(path: str) -> UnwindTable:
    from profiler.unwind.build import build_table  # numpy: only where tables are built

    return build_table(path)


class TableCache:
    """`get(path)`: the binary's unwind table from disk, else built (build_table) and stored;
    `lookup(path)`: from disk only (what the agent does itself: reading a file needs no numpy).

    Without a root (none given and $PODFLAME_SYMBOL_CACHE unset) every call builds."""

    def __init__(self, root: str | None = None, *, max_bytes: int = 256 << 20,
                 builder: Callable[[str], UnwindTable] = _build_table) -> None:
        root = root if root is not None else os.environ.get("PODFLAME_SYMBOL_CACHE")
        self.root = os.path.join(root, "unwind", f"v{FORMAT}") if root else None
        self.max_bytes = max_bytes
        self.builder = builder
        self._stores = 0
        self.stats = {"hits": 0, "built": 0, "corrupt": 0, "evicted": 0, "errors": 0}

    def key(self, path: str) -> tuple[str, str | None, tuple[int, int, int, int]]:
        """(cache key, build id, file identity) of the binary at `path`: the build id, else the digest of
        its CFI (`cfi_digest`), else its identity. Raises OSError when `path` cannot be opened."""
        with open(path, "rb") as f:
            identity = file_identity(os.fstat(f.fileno()))
            try:
                elf = ElfFile(f)
                build_id = elf_build_id(elf)
                if build_id:
                    return "".join(c for c in build_id.lower() if c in "0123456789abcdef"), build_id, identity
                digest = cfi_digest(elf)
            except (ElfFormatError, struct.error, ValueError):
                digest = None
        return digest or self.identity_key(identity), None, identity

    @staticmethod
    def identity_key(identity: tuple[int, int, int, int]) -> str:
        return "id-" + "-".join(str(v) for v in identity)

    @staticmethod
    def image_key(image: bytes) -> str:
        """The cache key of an ELF image without a file: its content, so another kernel's vDSO (or any
        other image) never reads this one's table."""
        return "img-" + hashlib.sha256(image).hexdigest()

    def _file(self, key: str) -> str:
        assert self.root is not None
        return os.path.join(self.root, key[-2:], key + ".tbl")

    def lookup(self, path: str) -> UnwindTable | None:
        """The table stored for the binary at `path`, or None (not stored, unreadable or corrupt).
        Raises OSError when `path` itself cannot be read."""
        if self.root is None:
            return None
        return self._lookup(*self.key(path))

    def _lookup(self, key: str, build_id: str | None, identity: tuple[int, int, int, int]) -> UnwindTable | None:
        table = self._read(key, build_id, identity)
        if table is None and key.startswith("cfi-"):  # stored by identity: its rows rest on indirect pointers
            table = self._read(self.identity_key(identity), build_id, identity)
        return table

    def lookup_image(self, image: bytes) -> UnwindTable | None:
        """The table stored for this ELF image (`image_key`), or None."""
        return self._read(self.image_key(image), None, None) if self.root is not None else None

    def store_image(self, image: bytes, table: UnwindTable) -> None:
        if self.root is not None:
            self._write(self._file(self.image_key(image)), encode(table))

    def _read(self, key: str, build_id: str | None,
              identity: tuple[int, int, int, int] | None) -> UnwindTable | None:
        file = self._file(key)
        try:
            with open(file, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError:
            self.stats["errors"] += 1
            return None
        table = decode(raw, build_id, identity)
        if table is None:
            self.stats["corrupt"] += 1
            return None
        self.stats["hits"] += 1
        with contextlib.suppress(OSError):
            os.utime(file)
        return table

    def get(self, path: str) -> UnwindTable:
        """Raises what build_table raises (OSError, UnwindFormatError) for a binary it cannot build."""
        keys = self.key(path) if self.root is not None else None
        if keys is not None and (table := self._lookup(*keys)) is not None:
            return table
        table = self.builder(path)
        self.stats["built"] += 1
        if keys is not None:
            self._store(keys, table)
        return table

    def store(self, path: str, table: UnwindTable) -> None:
        """Keeps `table`, built elsewhere (the agent's own small builds), as the table of the binary at `path`."""
        if self.root is not None:
            self._store(self.key(path), table)

    def _store(self, keys: tuple[str, str | None, tuple[int, int, int, int]], table: UnwindTable) -> None:
        key, _, identity = keys
        if key.startswith("cfi-") and table.stats.get("indirect"):
            key = self.identity_key(identity)  # read bytes the digest does not cover: this file only
        self._write(self._file(key), encode(table))

    def _write(self, path: str, data: bytes) -> None:
        d = os.path.dirname(path)
        tmp = None
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            self.stats["errors"] += 1
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return
        self._stores += 1
        if self._stores % 32 == 1:
            self.trim()

    def trim(self) -> None:
        """Drops least recently used entries until the total is under max_bytes."""
        if self.root is None or not os.path.isdir(self.root):
            return
        entries = []
        for prefix in os.scandir(self.root):
            if not prefix.is_dir():
                continue
            for entry in os.scandir(prefix.path):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    entries.append((st.st_mtime, st.st_size, entry.path))
        entries.sort()
        total = sum(e[1] for e in entries)
        for _, size, path in entries[:-1]:  # never the newest: the one just written
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
                self.stats["evicted"] += 1
