"""The agent hands freed C heap back after BCC's compile and after drains."""

from __future__ import annotations

from pathlib import Path

from profiler.heap import release_freed_memory


def rss_kb() -> int:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0])


def test_freed_but_fragmented_heap_is_returned() -> None:
    # seven of every eight 2 KB blocks freed: the survivors pin the heap's top, so glibc keeps the
    # 14 KB holes resident until malloc_trim releases their whole pages
    blocks = [bytearray(2048) for _ in range(40_000)]
    blocks = blocks[::8]
    before = rss_kb()
    assert release_freed_memory()
    assert rss_kb() < before - 20_000, "less than 20 MB of the ~70 MB freed came back"
    del blocks
