"""The kept flame-graph answers (web/query/treecache.py) and their gzip (web/server/gzipjoin.py): the joined gzip
decodes to the exact JSON, and the cache keeps to its bytes. (Hits and misses through the API: tests/test_api.py.)"""

from __future__ import annotations

import gzip
import json
import random

from web.query.treecache import Answer, TreeCache
from web.server.gzipjoin import gzip_join


def test_gzip_join_decodes_to_head_and_tail() -> None:
    rng = random.Random(7)
    head = json.dumps({"names": [f"fn_{rng.randrange(10**6)}" for _ in range(20000)]}).encode()[:-1]
    answer = Answer(head)
    for tail in ({"from": 1.5, "to": 2.5}, {}, {"x": "é" * 3000}):
        joined = gzip_join(answer.deflated(), answer.tail_bytes(tail))
        assert gzip.decompress(joined) == answer.body(tail)
        assert json.loads(answer.body(tail))["names"][0].startswith("fn_")
    assert len(gzip_join(answer.deflated(), b"}")) < len(head) // 2  # the kept part is compressed once, for real


def test_cache_is_bounded_by_bytes() -> None:
    cache = TreeCache(max_bytes=10_000)
    for k in range(10):
        cache.put(k, Answer(b"x" * 1500))
    assert len(cache) < 10 and cache.get(9) is not None and cache.get(0) is None
    cache.put("huge", Answer(b"x" * 6000))  # over half the budget: never kept
    assert cache.get("huge") is None


