"""A bounded cache of finished flame-graph answers, keyed by exactly the stored data they are built from.

Building a tree costs hundreds of ms for 100k nodes, and the same view is asked again and again: a reload,
a shared link, the back button, an auto refresh with nothing new, a second person on the same pod. The key
is the set of stored profiles the query reads (each by its series, start, duration, total and the backend's
handle) with the sample type, unit and node budget. When the store says a ref always reads the same samples
(`Store.immutable_refs`), equal refs give an equal tree whatever range text chose them; new data,
compaction and retention change the refs, so they miss and nothing stale is served. The range the request
named is not part of the answer kept: it is added per request (`Answer.body`), so "now-15m" asked a
minute later still hits while its `from`/`to` say what it meant this time.

Entries hold the JSON (built once, without its closing brace) and, once asked for, its deflate stream, so a
hit costs neither serialising nor compressing megabytes. Bounded by bytes, least recently used out first.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from web.query import treebin
from web.store.base import StoredProfile

DEFAULT_MAX_BYTES = 96 << 20
PREVIEWS_KEPT = 2  # per answer: the screen widths seen last (each at most half the answer, usually ~5%)


def payload_json_head(payload: dict[str, Any]) -> bytes:
    """The payload as JSON without its closing brace; `levels` (lists of ints, a million for a node's day)
    written by list repr, which is JSON for ints and about twice as fast as the encoder's per-item path."""
    rest = {k: v for k, v in payload.items() if k != "levels"}
    head = json.dumps(rest, separators=(",", ":"))[:-1]
    if "levels" not in payload:
        return head.encode()
    levels = ",".join(repr(level) for level in payload["levels"]).replace(" ", "")
    return "".join((head, "," if len(head) > 1 else "", '"levels":[', levels, "]")).encode()


@dataclass(slots=True)
class Answer:
    """One finished answer: JSON without the closing brace, and (lazily) that JSON as a deflate stream
    ended by a sync flush, so a per-request tail can follow it in one gzip member (web/server/gzipjoin.py)."""

    head: bytes
    _deflated: tuple[bytes, int, int] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def body(self, tail: dict[str, Any]) -> bytes:
        return self.head + self.tail_bytes(tail)

    def tail_bytes(self, tail: dict[str, Any]) -> bytes:
        """`tail`'s keys and the closing brace (the head always holds at least one key)."""
        if not tail:
            return b"}"
        return b"," + json.dumps(tail, separators=(",", ":")).encode()[1:]

    def deflated(self) -> tuple[bytes, int, int]:
        """(raw deflate of head, sync-flushed, not final; crc32 of head; len of head), computed once."""
        with self._lock:
            if self._deflated is None:
                c = zlib.compressobj(1, zlib.DEFLATED, -15)  # level 1: compression must cost less than it saves
                self._deflated = (c.compress(self.head) + c.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(self.head),
                                  len(self.head))
            return self._deflated


@dataclass(slots=True)
class BinaryAnswer(Answer):
    """An answer in web/query/treebin.py's binary form: the request's keys go after it as JSON and length."""

    _previews: OrderedDict[int, BinaryAnswer] = field(default_factory=OrderedDict, repr=False)

    def tail_bytes(self, tail: dict[str, Any]) -> bytes:
        body = json.dumps(tail, separators=(",", ":")).encode()
        return body + struct.pack("<I", len(body))

    def preview(self, width: int) -> BinaryAnswer:
        """This tree as a `width`-px view of the whole graph draws it (web/query/treebin.py's `preview`), kept
        with it for a few widths (screens come in few sizes); itself when a preview would save little."""
        with self._lock:
            got = self._previews.get(width)
            if got is None:
                data = treebin.preview(self.head, width)
                got = self if data is None else BinaryAnswer(data)
                self._previews[width] = got
                if len(self._previews) > PREVIEWS_KEPT:
                    self._previews.popitem(last=False)
            return got


def refs_key(refs: Sequence[StoredProfile]) -> Hashable:
    return tuple((r.series.id, r.start_ns, r.duration_ns, r.period_ns, r.total, r.handle) for r in refs)


class TreeCache:
    """Answers by key, at most `max_bytes` of them (an answer over half of that is not kept)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Answer] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._used = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Answer | None:
        with self._lock:
            answer = self._entries.get(key)
            if answer is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return answer

    def put(self, key: Hashable, answer: Answer) -> None:
        """Keep `answer`; its size is counted with room for its deflate stream (about a sixth of the JSON)."""
        size = len(answer.head) + len(answer.head) // 5
        if size > self.max_bytes // 2:
            return
        with self._lock:
            if key in self._entries:
                self._used -= self._sizes.pop(key)
                del self._entries[key]
            self._entries[key] = answer
            self._sizes[key] = size
            self._used += size
            while self._used > self.max_bytes and self._entries:
                old, _ = self._entries.popitem(last=False)
                self._used -= self._sizes.pop(old)

    def __len__(self) -> int:
        return len(self._entries)
