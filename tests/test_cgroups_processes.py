"""CgroupResolver.processes: the pids a cgroup filter samples (the cgroup and every cgroup below it), read
from cgroup.procs files, on a directory tree shaped like a v2 hierarchy."""

from __future__ import annotations

import os
from pathlib import Path

from profiler.cgroups import CgroupResolver


def tree(root: Path, procs: dict[str, list[int]]) -> None:
    for rel, pids in procs.items():
        d = root / rel if rel else root
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))


def test_a_cgroup_gives_its_processes_and_those_below_it_only(tmp_path: Path) -> None:
    tree(tmp_path, {"": [1], "kubepods.slice": [], "kubepods.slice/pod-a.slice": [10],
                    "kubepods.slice/pod-a.slice/ctr-1.scope": [11, 12], "kubepods.slice/pod-a.slice/ctr-2.scope": [13],
                    "kubepods.slice/pod-ab.slice": [20], "system.slice": [30]})
    r = CgroupResolver(tmp_path)
    pod = os.stat(tmp_path / "kubepods.slice/pod-a.slice").st_ino
    ctr = os.stat(tmp_path / "kubepods.slice/pod-a.slice/ctr-1.scope").st_ino
    assert sorted(r.processes({pod})) == [10, 11, 12, 13]  # not pod-ab's 20: a name prefix is not a child
    assert sorted(r.processes({ctr})) == [11, 12]
    assert sorted(r.processes({ctr, pod})) == [10, 11, 12, 13]  # each pid once
    assert r.processes({os.stat(tmp_path / "system.slice").st_ino + 10**9}) == []  # no such cgroup
    assert r.processes(set()) == []


def test_a_cgroup_removed_meanwhile_gives_nothing_and_no_error(tmp_path: Path) -> None:
    tree(tmp_path, {"pod.slice": [5], "pod.slice/ctr.scope": [6]})
    r = CgroupResolver(tmp_path)
    pod = os.stat(tmp_path / "pod.slice").st_ino
    r.rescan()
    (tmp_path / "pod.slice/ctr.scope/cgroup.procs").unlink()
    (tmp_path / "pod.slice/ctr.scope").rmdir()
    assert r.processes({pod}) == [5]
