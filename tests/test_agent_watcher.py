"""The sampler's new-process watcher is never held by a drain (no BPF needed).

The watcher thread announces each new process to the unwind loader, Python detection and the agent's
maps prefetch, in turn. The prefetch used to wait for the drain's lock on the maps cache: a first start's
cold drain symbolizes for seconds (18-30 s on a loaded 2-core node), and for all that time no new process
reached the unwind loader (py-spy showed the watcher in Agent.prefetch, the loader idle). Now a batch that
finds a drain in progress waits in a list, read as that drain ends (or by the next prefetch).
"""

from __future__ import annotations

import threading
from dataclasses import replace

from podflame.model import Frame, Line, Unresolved
from profiler.agent import Agent, Context
from profiler.sampler import Drain
from tests.test_agent import FakeCgroups, FakeMaps, FakePods, raw


class SlowSymbolizer:
    """Holds the drain inside symbolization until `go` is set, as a cold drain does for seconds."""

    generation = 0

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.go = threading.Event()

    def for_process(self, pid):
        return self

    def frame(self, f: Frame, leaf: bool) -> Frame:
        self.inside.set()
        assert self.go.wait(60), "the test never let the drain finish"
        return replace(f, lines=(Line(f"fn_{f.address:x}"),)) if f.mapping else replace(f, reason=Unresolved.NO_MAPPING)


class Sampler:
    period_ns = 10

    def __init__(self) -> None:
        self.drains = [Drain(0, 10, [raw(user=(0x401000,))]), Drain(10, 20)]

    def watch_new_processes(self, callback):
        self.announce = callback

    def drain(self):
        return self.drains.pop(0)


def test_a_process_announced_during_a_drain_does_not_wait_for_it_and_is_read_as_it_ends() -> None:
    sampler = Sampler()
    maps = FakeMaps()
    symbolizer = SlowSymbolizer()
    agent = Agent(sampler, Context(node="n1", maps=maps, cgroups=FakeCgroups()), symbolizer=symbolizer,
                  sink=lambda profiles: None, pod_labels=FakePods())
    drain = threading.Thread(target=agent.drain_once)
    drain.start()
    try:
        assert symbolizer.inside.wait(60)  # the drain holds the maps cache now
        watcher = threading.Thread(target=sampler.announce, args=([1234],))
        watcher.start()
        watcher.join(30)  # not a timing: on main it stays blocked until the drain ends, here it returns at once
        assert not watcher.is_alive(), "the watcher waited for the drain"
        assert 1234 not in maps.refreshed  # the drain has the cache: the batch waits
    finally:
        symbolizer.go.set()
        drain.join(60)
    assert not drain.is_alive()
    assert 1234 in maps.refreshed  # read as the drain let the cache go: no later than a waiting watcher did


def test_a_batch_that_finds_the_cache_free_is_read_at_once_with_the_ones_waiting() -> None:
    sampler = Sampler()
    maps = FakeMaps()
    agent = Agent(sampler, Context(node="n1", maps=maps, cgroups=FakeCgroups()), symbolizer=SlowSymbolizer(),
                  sink=lambda profiles: None, pod_labels=FakePods())
    with agent._ctx_lock:  # a drain in progress
        watcher = threading.Thread(target=sampler.announce, args=([1],), daemon=True)
        watcher.start()
        watcher.join(30)
        assert not watcher.is_alive(), "the watcher waited for the drain"
    assert maps.refreshed == set()
    sampler.announce([2])
    assert maps.refreshed == {1, 2}
