"""Only processes that have run `min_age_s` get a `pid` label; younger ones share one profile per cgroup
and comm, so short-lived processes do not make a series each (profiler/pidlabel.py). Start times are the
maps cache's (read with the maps in the drain's refresh), exited processes keep their label for the
cache's grace period."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from profiler.agent import Context, build_profiles
from profiler.pidlabel import PidLabels
from profiler.procmaps import MapsCache, start_time
from tests.test_agent import FakeCgroups, FakeMaps, drain_of, raw


def test_real_processes_are_labelled_by_age_and_gone_ones_keep_their_label() -> None:
    before = time.time_ns()
    young = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.6)
        maps = MapsCache()
        labels = PidLabels(min_age_s=1.5, starts=maps)

        def drain(tgids: set[int]) -> None:  # as build_profiles does: the maps cache's refresh, then labels
            maps.refresh(tgids)
            labels.begin_drain(tgids)

        # init is as old as the host (where its maps are unreadable, its /proc/1/stat is read); the last
        # pid does not exist
        drain({1, young.pid, 2**22 + 1})
        now = time.time_ns()
        started = labels._started[young.pid]
        # /proc's start time on the wall clock, within a clock tick (10 ms) of the wall clock around the start
        # (boot time from /proc/stat's whole-second btime was up to 1 s early)
        assert started is not None and before - 20_000_000 <= started <= now
        assert maps.start_time(young.pid) == start_time(young.pid)  # the same field, read once (by the cache)
        assert labels.label(young.pid, started + 10**9) is None and labels.label(1, now) == "1"
        assert labels.label(young.pid, started + 2 * 10**9) == str(young.pid)
        assert labels.label(2**22 + 1, now + 10**12) is None
        young.kill()
        young.wait()
        assert start_time(young.pid) is None
        # exited: its last samples come in the drain that notices it, and keep the label its earlier drains
        # gave (the cache keeps an exited process's maps and start time for its grace period of drains)
        for _ in range(maps.grace_drains):
            drain({young.pid})
            assert labels.label(young.pid, now + 2 * 10**9) == str(young.pid)
        drain({young.pid})  # past the grace period: unknown, like a process gone before anything read it
        assert labels.label(young.pid, now + 2 * 10**9) is None
    finally:
        young.kill()
        young.wait()


def test_a_minimum_age_without_start_times_is_refused() -> None:
    with pytest.raises(ValueError, match="start times"):
        PidLabels(min_age_s=5)
    assert PidLabels(0).label(7, 0) == "7"  # every process labelled: nothing to ask


def test_short_lived_processes_of_a_cgroup_share_one_profile_without_pid() -> None:
    old = 1  # init: as old as the host
    young = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        maps = MapsCache()
        c = Context(node="n1", maps=maps, cgroups=FakeCgroups(), pids=PidLabels(min_age_s=5, starts=maps))
        end = time.time_ns()
        samples = [raw(tgid=old, pid=old, comm="app", user=(0x401000,), count=3),
                   raw(tgid=young.pid, pid=young.pid, comm="sh", user=(0x401000,), count=2),
                   raw(tgid=2**22 + 2, pid=2**22 + 2, comm="sh", user=(0x401000,), count=4),  # exited already
                   raw(tgid=2**22 + 3, pid=2**22 + 3, comm="curl", user=(0x401000,), count=1)]
        profiles = build_profiles(drain_of(*samples, start_ns=end - 10**10, end_ns=end), c, period_ns=10)
        got = sorted((p.labels["comm"], p.labels.get("pid"), p.total()) for p in profiles)
        assert got == sorted([("app", str(old), 3), ("sh", None, 6), ("curl", None, 1)])
        # every sample is still there, under its cgroup
        assert sum(p.total() for p in profiles) == 10
        assert {p.labels["cgroup"] for p in profiles} == {FakeCgroups().path(7)}
    finally:
        young.kill()
        young.wait()


def test_zero_minimum_age_labels_every_process() -> None:
    c = Context(node="n1", maps=FakeMaps(), cgroups=FakeCgroups())  # the default: record's, tests'
    profiles = build_profiles(drain_of(raw(tgid=2**22 + 4, pid=2**22 + 4, comm="sh", count=2)), c, period_ns=10)
    assert [p.labels.get("pid") for p in profiles] == [str(2**22 + 4)]
