"""Which pods the agent samples, applied in the kernel by cgroup id.

With a selection (`podflame agent --namespaces shop`, or the namespace-only overlay's
PODFLAME_WATCH_NAMESPACE), the sampler's cgroup filter holds the cgroup ids of the selected pods'
pod-level cgroups (the BPF program admits every cgroup below a filter entry, so all of a pod's
containers), and the BPF program returns before walking any stack for every other task: excluded
pods, and processes outside pods, cost one map lookup per ancestor level and tick.

The sampler reads an empty filter as "sample everything". A selection that matches no pod (yet)
must mean the opposite, so the filter then holds only `MATCH_NOTHING`: cgroup id 0, which no
cgroup has (kernfs allocates node ids from 1, and the root cgroup is 1), so no sample passes.
The same holds before the first pod list arrived: nothing is sampled until the agent knows
which pods are selected.

`PodCgroupFilter.refresh()` recomputes the set from the pod index and the cgroup v2 tree and
updates the kernel only when it changed; `start()` runs it every `period` seconds in a thread,
so a new pod of a selected namespace is sampled within about a second of its cgroup appearing.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

from podflame.threads import daemon_thread
from profiler.kube import MIRROR_ANNOTATION, PodSelection, pod_cgroup_ids

if TYPE_CHECKING:
    from collections.abc import Iterable

    from profiler.cgroups import CgroupResolver
    from profiler.kube import KubeMetadata

log = logging.getLogger("podflame.selection")

MATCH_NOTHING = 0  # a cgroup id no cgroup has: a filter of only this admits no sample


class CgroupFiltered(Protocol):
    def set_cgroup_filter(self, cgroup_ids: Iterable[int] | None) -> None: ...


def parse_selection(namespaces: str | None = None, exclude_namespaces: str | None = None,
                    pod_selector: str | None = None, *, watch_namespace: str | None = None) -> PodSelection:
    """A PodSelection from the agent's options: comma-separated namespaces, and `key=value,...` labels.

    `watch_namespace` (the agent may read only that namespace's pods) always restricts the selection
    to that namespace: pods of other namespaces could not be named, and are not the installer's to see.
    """
    def names(value: str | None) -> frozenset[str]:
        return frozenset(n.strip() for n in (value or "").split(",") if n.strip())

    labels: dict[str, str] = {}
    for term in (t.strip() for t in (pod_selector or "").split(",")):
        if not term:
            continue
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip().lstrip("=")  # accept k=v and k==v, as kubectl -l does
        if not sep or not key or "!" in key:
            raise ValueError(f"pod selector term {term!r} is not KEY=VALUE")
        labels[key] = value
    include = names(namespaces)
    if watch_namespace:
        if include and watch_namespace not in include:
            raise ValueError(f"--namespaces {sorted(include)} lies outside the watched namespace {watch_namespace!r}")
        include = frozenset({watch_namespace})
    return PodSelection(namespaces=include, exclude_namespaces=names(exclude_namespaces), labels=labels)


class PodCgroupFilter:
    """Keeps `sampler`'s cgroup filter equal to the cgroups of the pods `selection` picks."""

    def __init__(self, sampler: CgroupFiltered, kube: KubeMetadata, selection: PodSelection,
                 cgroups: CgroupResolver, *, period: float = 1.0) -> None:
        if selection.everything:
            raise ValueError("an empty selection samples everything: no filter is needed")
        self.sampler = sampler
        self.kube = kube
        self.selection = selection
        self.cgroups = cgroups
        self.period = period
        self.current: frozenset[int] | None = None  # what the kernel has, once set by us
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_missing = False

    @staticmethod
    def initial_ids() -> list[int]:
        """For `Sampler(cgroup_ids=...)`: nothing is sampled until the first refresh."""
        return [MATCH_NOTHING]

    def wanted(self) -> frozenset[int]:
        """Cgroup ids of the selected pods present on this node now; {MATCH_NOTHING} when there are none."""
        if not self.kube.synced:
            return frozenset({MATCH_NOTHING})
        uids: set[str] = set()
        for pod in self.kube.pods():
            if self.selection.matches(pod):
                uids.add(pod.uid)
                mirror = pod.annotations.get(MIRROR_ANNOTATION)
                if mirror:  # a static pod's cgroup carries its config hash, not the mirror pod's UID
                    uids.add(mirror)
        ids = pod_cgroup_ids(self.cgroups, uids) if uids else set()
        if uids and not ids and not self._warned_missing:
            self._warned_missing = True
            log.warning("%d selected pods but none of their cgroups under the cgroup v2 root %s: nothing is "
                        "sampled (a cgroup v1 node with the cgroupfs driver has no pod cgroups in v2)",
                        len(uids), self.cgroups.root)
        return frozenset(ids) if ids else frozenset({MATCH_NOTHING})

    @property
    def selected(self) -> int | None:
        """How many pod cgroups the kernel's filter admits: None before the first refresh set it, 0 while
        it holds only MATCH_NOTHING (the agent's /healthz shows it)."""
        ids = self.current
        return None if ids is None else len(ids - {MATCH_NOTHING})

    def refresh(self) -> frozenset[int]:
        ids = self.wanted()
        if ids != self.current:
            self.sampler.set_cgroup_filter(ids)
            log.debug("sampling %s", "no pod" if ids == {MATCH_NOTHING} else f"{len(ids)} pod cgroups")
            self.current = ids
        return ids

    # -- background refresh

    def start(self) -> None:
        if self._thread is None:
            self._thread = daemon_thread(self._run, "podflame-selection")
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # keep the last filter; never widen it on an error
                self.errors += 1
                log.exception("updating the pod selection failed; keeping the previous filter")
            if self._stop.wait(self.period):
                return
