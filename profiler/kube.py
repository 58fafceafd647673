"""Kubernetes pod metadata for the node agent: one list + watch of this node's pods.

Why here and not in the server: only the node knows which container id ran in which cgroup,
and it must know it when the samples are drained, which may be after the pod was deleted.
So the agent keeps an index of this node's pods, fed by the real `kubernetes` client
(list, then watch from the list's resourceVersion; relist on 410 Gone; backoff on errors),
and keeps deleted pods and replaced container ids for `keep_deleted` seconds.

Interface for the agent (profiler/agent.py wires it; see docs/kubernetes.md):

    meta = KubeMetadata.from_environment(node_name)   # None without in-cluster config or $KUBECONFIG
    #   (or KubeMetadata(node_name, load_api_client(), namespace=None, label_allowlist=[...]))
    meta.start()                                 # background thread: list + watch
    meta.wait_synced(timeout=10)                 # optional: True once the first list landed

    kc = parse_kubelet_path(cgroup_path)         # profiler.cgroups
    labels = meta.resolve(kc.container_id, kc.pod_uid)
    #   -> {"namespace", "pod", "container", "workload", "image", "node", <allow-listed labels>}
    #   -> None while the container id is not known yet: hold the samples, call again at the next
    #      drain (the watch usually catches up within a second); after your hold time give up with
    meta.labels_for(kc)                          # best effort: pod-level labels, or {} if the pod is unknown
    meta.stop()

    # which pods to sample (default all), as cgroup ids for Sampler.set_cgroup_filter:
    sel = PodSelection(namespaces=frozenset({"shop"}))
    ids = pod_cgroup_ids(resolver, [p.uid for p in meta.pods() if p.deleted_at is None and sel.matches(p)])

`labels_for` and `resolve` never call the API server; they read the index under a lock.
Label names follow docs/api.md; allow-listed pod labels and annotations are copied under their
own names with `/`, `.` and `-` (and anything else Prometheus disallows) turned into `_`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from podflame.threads import daemon_thread

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from profiler.cgroups import CgroupResolver, KubeletCgroup

log = logging.getLogger("podflame.kube")

# Labels the agent sets itself; a copied pod label never overwrites one of these.
RESERVED_LABELS = frozenset({"namespace", "pod", "container", "workload", "image", "node", "pod_uid",
                             "container_id", "qos", "runtime", "cgroup", "comm", "pid", "unit"})
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"  # static pods: the UID the kubelet (and the cgroup) uses


def label_name(key: str) -> str:
    """A label/annotation key as a Prometheus label name: "app.kubernetes.io/name" -> "app_kubernetes_io_name"."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", key)
    return f"_{name}" if name[:1].isdigit() else name


def _strip_runtime(container_id: str | None) -> str | None:
    """Pod status ids carry the runtime as a scheme ("containerd://<id>"); cgroups have the bare id."""
    if not container_id:
        return None
    return container_id.split("://", 1)[-1]


# ---------------------------------------------------------------------------------------------
# The index


@dataclass
class ContainerInfo:
    name: str
    image: str
    pod_uid: str


@dataclass
class PodInfo:
    uid: str
    namespace: str
    name: str
    node: str
    labels: dict[str, str]
    annotations: dict[str, str]
    workload: str | None  # "Deployment/cart"
    container_ids: dict[str, ContainerInfo] = field(default_factory=dict)
    resource_version: str = ""
    deleted_at: float | None = None


class PodIndex:
    """container id -> container, pod UID -> pod; deleted pods and replaced ids kept for a while.

    Pure data structure (no API calls) so its rules are testable alone; thread-safe.
    """

    def __init__(self, *, keep_deleted: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 owner_of: Callable[[Mapping[str, Any]], str | None] | None = None) -> None:
        self.keep_deleted = keep_deleted
        self._clock = clock
        self._owner_of = owner_of or workload_by_convention
        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}
        self._aliases: dict[str, str] = {}  # static pod config hash -> mirror pod UID
        self._containers: dict[str, ContainerInfo] = {}
        self._gone: dict[str, float] = {}  # container id -> when it left its pod's status

    def upsert(self, pod: Mapping[str, Any]) -> None:
        info = self._info(pod)
        with self._lock:
            old = self._pods.get(info.uid)
            self._pods[info.uid] = info
            mirror = info.annotations.get(MIRROR_ANNOTATION)
            if mirror:
                self._aliases[mirror] = info.uid
            now = self._clock()
            for cid, c in info.container_ids.items():
                self._containers[cid] = c
                self._gone.pop(cid, None)
            if old is not None:
                for cid in old.container_ids.keys() - info.container_ids.keys():
                    self._gone.setdefault(cid, now)  # a restarted container's old id: samples may still come

    def delete(self, pod: Mapping[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid")
        if not uid:
            return
        with self._lock:
            known = uid in self._pods
        if not known:
            self.upsert(pod)  # deleted before we saw it: its final state still names its containers
        with self._lock:
            info = self._pods.get(uid)
            if info is not None and info.deleted_at is None:
                info.deleted_at = self._clock()

    def replace_all(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """After a (re)list: pods missing from it were deleted while we were not watching."""
        seen = set()
        for pod in pods:
            self.upsert(pod)
            seen.add(pod["metadata"]["uid"])
        with self._lock:
            now = self._clock()
            for uid, info in self._pods.items():
                if uid not in seen and info.deleted_at is None:
                    info.deleted_at = now

    def purge(self) -> None:
        """Forget pods deleted, and container ids replaced, more than keep_deleted seconds ago."""
        with self._lock:
            now = self._clock()
            for uid in [u for u, p in self._pods.items()
                        if p.deleted_at is not None and now - p.deleted_at > self.keep_deleted]:
                info = self._pods.pop(uid)
                for cid in info.container_ids:
                    self._containers.pop(cid, None)
                    self._gone.pop(cid, None)
                for alias in [a for a, u in self._aliases.items() if u == uid]:
                    del self._aliases[alias]
            for cid in [c for c, t in self._gone.items() if now - t > self.keep_deleted]:
                del self._gone[cid]
                c = self._containers.get(cid)
                pod = self._pods.get(c.pod_uid) if c else None
                if pod is None or cid not in pod.container_ids:
                    self._containers.pop(cid, None)

    def pod(self, uid: str | None) -> PodInfo | None:
        if not uid:
            return None
        with self._lock:
            return self._pods.get(uid) or self._pods.get(self._aliases.get(uid, ""))

    def container(self, container_id: str | None) -> tuple[PodInfo, ContainerInfo] | None:
        if not container_id:
            return None
        with self._lock:
            c = self._containers.get(container_id)
            pod = self._pods.get(c.pod_uid) if c else None
            return (pod, c) if pod is not None and c is not None else None

    def pods(self) -> list[PodInfo]:
        with self._lock:
            return list(self._pods.values())

    def _info(self, pod: Mapping[str, Any]) -> PodInfo:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        uid = meta["uid"]
        images = {c.get("name"): c.get("image", "")
                  for key in ("initContainers", "containers", "ephemeralContainers")
                  for c in spec.get(key) or []}
        info = PodInfo(uid=uid, namespace=meta.get("namespace", ""), name=meta.get("name", ""),
                       node=spec.get("nodeName", ""), labels=dict(meta.get("labels") or {}),
                       annotations=dict(meta.get("annotations") or {}), workload=self._owner_of(pod),
                       resource_version=meta.get("resourceVersion", ""))
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for cs in status.get(key) or []:
                name = cs.get("name", "")
                image = images.get(name) or cs.get("image", "")
                # the running instance, and the one before a restart (its late samples are still coming)
                for cid in (cs.get("containerID"), ((cs.get("lastState") or {}).get("terminated") or {})
                            .get("containerID")):
                    bare = _strip_runtime(cid)
                    if bare:
                        info.container_ids[bare] = ContainerInfo(name, image, uid)
        return info


# ---------------------------------------------------------------------------------------------
# Workload owners


def _controller(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = meta.get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), refs[0] if refs else None)


def workload_by_convention(pod: Mapping[str, Any]) -> str | None:
    """"Kind/name" of the pod's workload without API calls.

    A ReplicaSet made by a Deployment is named "<deployment>-<pod-template-hash>" and its pods
    carry that hash as a label: strip it. Static pods (owned by their Node) and bare pods have none.
    """
    meta = pod.get("metadata") or {}
    ref = _controller(meta)
    if ref is None or ref.get("kind") == "Node":
        return None
    kind, name = ref.get("kind", ""), ref.get("name", "")
    if kind == "ReplicaSet":
        h = (meta.get("labels") or {}).get("pod-template-hash")
        if h and name.endswith(f"-{h}"):
            return f"Deployment/{name[: -len(h) - 1]}"
    return f"{kind}/{name}"


class OwnerResolver:
    """Workload via the name convention, asking the API server only for ReplicaSets that break it
    (bare ReplicaSets, or ones owned by another controller such as an Argo Rollout). Answers are cached;
    without RBAC for replicasets it falls back to the ReplicaSet itself and says so once."""

    def __init__(self, api: ApiClient | None, *, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}
        self._warned = False

    def __call__(self, pod: Mapping[str, Any]) -> str | None:
        by_name = workload_by_convention(pod)
        meta = pod.get("metadata") or {}
        ref = _controller(meta)
        if (self._api is None or ref is None or ref.get("kind") != "ReplicaSet"
                or (by_name or "").startswith("Deployment/")):
            return by_name
        key = (meta.get("namespace", ""), ref.get("name", ""))
        hit = self._cache.get(key)
        if hit and self._clock() - hit[0] < self._ttl:
            return hit[1]
        workload = by_name
        try:
            from kubernetes import client

            resp = client.AppsV1Api(self._api).read_namespaced_replica_set(
                key[1], key[0], _preload_content=False, _request_timeout=10)
            rs = json.loads(resp.data)  # type: ignore[attr-defined]  # _preload_content=False: the raw HTTP response
            owner = _controller(rs.get("metadata") or {})
            if owner is not None:
                workload = f"{owner.get('kind')}/{owner.get('name')}"
        except Exception as e:  # RBAC, network: keep the ReplicaSet as the workload
            if not self._warned:
                log.warning("cannot read ReplicaSet %s/%s for its owner (%s); using the ReplicaSet",
                            key[0], key[1], getattr(e, "status", None) or e)
                self._warned = True
        self._cache[key] = (self._clock(), workload or "")
        return workload


# ---------------------------------------------------------------------------------------------
# API client


def load_api_client(kubeconfig: str | None = None) -> ApiClient | None:
    """In-cluster service account config, else $KUBECONFIG (or `kubeconfig`); None when neither.

    The agent's ~/.kube/config is deliberately not used: a root agent on a workstation should not
    silently pick up the operator's credentials.
    """
    path = kubeconfig or os.environ.get("KUBECONFIG")
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and kubeconfig is None
    if not in_cluster and not path:
        return None  # a plain host: the client's ~30 MB of imports are not paid
    from kubernetes import client, config

    if in_cluster:
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        except config.ConfigException as e:
            log.warning("in-cluster config failed: %s", e)
    if path:
        try:
            return config.new_client_from_config(config_file=path.split(os.pathsep)[0], persist_config=False)
        except Exception as e:
            log.warning("cannot load kubeconfig %s: %s", path, e)
    return None


class Backoff:
    """Exponential backoff with full jitter, so a fleet of agents does not hammer a recovering API server."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2 ** self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


# ---------------------------------------------------------------------------------------------
# List + watch


class KubeMetadata:
    """This node's pods from the API server, and profile labels for kubelet cgroups."""

    def __init__(self, node_name: str, api: ApiClient, *, namespace: str | None = None,
                 label_allowlist: Iterable[str] = (), annotation_allowlist: Iterable[str] = (),
                 keep_deleted: float = 600.0, watch_timeout: int = 300, backoff: Backoff | None = None,
                 resolve_owners: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_name = node_name
        self.api = api
        self.namespace = namespace or None  # None: all namespaces (needs a ClusterRole), else a Role suffices
        self.label_allowlist = tuple(label_allowlist)
        self.annotation_allowlist = tuple(annotation_allowlist)
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        owners = OwnerResolver(api if resolve_owners else None, clock=clock)
        self.index = PodIndex(keep_deleted=keep_deleted, clock=clock, owner_of=owners)
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None  # the running kubernetes.watch.Watch, to stop it
        self.resource_version: str | None = None
        self.lists = 0  # how many full lists ran (1 + resyncs)
        self.errors = 0

    @classmethod
    def from_environment(cls, node_name: str, **kwargs: Any) -> KubeMetadata | None:
        """The agent's setup from its DaemonSet: None (logged once) when no API server is configured.

        PODFLAME_WATCH_NAMESPACE: watch only this namespace (the "namespace-only" overlay);
        PODFLAME_POD_LABELS / PODFLAME_POD_ANNOTATIONS: comma-separated keys to copy onto profiles.
        """
        api = load_api_client()
        if api is None:
            log.info("no Kubernetes API configured (neither in-cluster nor $KUBECONFIG): "
                     "profiles carry cgroup-derived pod labels only, as on a plain host")
            return None

        def keys(var: str) -> list[str]:
            return [k.strip() for k in os.environ.get(var, "").split(",") if k.strip()]

        kwargs.setdefault("namespace", os.environ.get("PODFLAME_WATCH_NAMESPACE") or None)
        kwargs.setdefault("label_allowlist", keys("PODFLAME_POD_LABELS"))
        kwargs.setdefault("annotation_allowlist", keys("PODFLAME_POD_ANNOTATIONS"))
        return cls(node_name, api, **kwargs)

    # -- lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._thread = daemon_thread(self._run, "podflame-kube")
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    # -- lookups (no API calls)

    def resolve(self, container_id: str | None, pod_uid: str | None) -> dict[str, str] | None:
        """Labels for a container, or None while its id (or, without an id, its pod) is unknown."""
        if container_id:
            found = self.index.container(container_id)
            if found is None:
                return None
            pod, c = found
            return self._labels(pod, c)
        by_uid = self.index.pod(pod_uid)
        return self._labels(by_uid, None) if by_uid is not None else None

    def labels_for(self, kc: KubeletCgroup) -> dict[str, str]:
        """Best effort, never None: container labels if known, else the pod's, else {}."""
        labels = self.resolve(kc.container_id, kc.pod_uid)
        if labels is None:
            pod = self.index.pod(kc.pod_uid)
            labels = self._labels(pod, None) if pod is not None else {}
        return labels

    def pods(self) -> list[PodInfo]:
        """Known pods (including recently deleted ones), e.g. to choose which cgroups to sample."""
        return self.index.pods()

    def _labels(self, pod: PodInfo, c: ContainerInfo | None) -> dict[str, str]:
        labels = {"namespace": pod.namespace, "pod": pod.name, "node": pod.node or self.node_name}
        if pod.workload:
            labels["workload"] = pod.workload
        if c is not None:
            labels["container"] = c.name
            if c.image:
                labels["image"] = c.image
        for source, allow in ((pod.labels, self.label_allowlist), (pod.annotations, self.annotation_allowlist)):
            for key in allow:
                if key in source:
                    name = label_name(key)
                    if name not in RESERVED_LABELS:
                        labels.setdefault(name, source[key])
        return labels

    # -- the list + watch loop

    def _list_call(self, **kwargs: Any):
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        if self.namespace:
            return core.list_namespaced_pod(self.namespace, **kwargs)
        return core.list_pod_for_all_namespaces(**kwargs)

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            try:
                self._list()
                self.backoff.reset()
                while not self._stop.is_set():
                    self._watch_once()
                    self.index.purge()
            except ApiException as e:
                if e.status == 410:  # our resourceVersion was compacted away: relist at once
                    log.info("pod watch expired (410 Gone); relisting")
                    continue
                self._error(f"API error {e.status} {e.reason}")
            except Exception as e:  # connection refused/reset, timeouts, bad JSON
                if self._stop.is_set():
                    break
                self._error(f"{type(e).__name__}: {e}")

    def _error(self, what: str) -> None:
        self.errors += 1
        delay = self.backoff.next()
        log.warning("pod list/watch failed (%s); retrying in %.1fs", what, delay)
        self._stop.wait(delay)

    def _list(self) -> None:
        pods: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"field_selector": f"spec.nodeName={self.node_name}", "limit": 500,
                                      "_preload_content": False, "_request_timeout": 60}
            if cont:
                kwargs["_continue"] = cont
            body = json.loads(self._list_call(**kwargs).data)
            pods.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
        self.index.replace_all(pods)
        self.index.purge()
        self.resource_version = meta.get("resourceVersion")
        self.lists += 1
        self._synced.set()
        log.info("listed %d pods on node %s (resourceVersion %s)", len(pods), self.node_name, self.resource_version)

    def _watch_once(self) -> None:
        """One watch request, from the last resourceVersion until the server's timeout."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        def list_pods(**kwargs: Any):  # no annotations or docstring: Watch then yields plain dicts
            return self._list_call(**kwargs)

        w = watch.Watch()
        self._watch = w
        try:
            for event in w.stream(list_pods, field_selector=f"spec.nodeName={self.node_name}",
                                  resource_version=self.resource_version, allow_watch_bookmarks=True,
                                  timeout_seconds=self.watch_timeout,
                                  _request_timeout=(10, self.watch_timeout + 30)):
                kind, obj = event.get("type"), event.get("raw_object") or {}
                if kind == "ERROR":  # the client raises for these; kept in case it yields one
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if kind in ("ADDED", "MODIFIED"):
                    self.index.upsert(obj)
                elif kind == "DELETED":
                    self.index.delete(obj)
                if rv:
                    self.resource_version = rv
                if self._stop.is_set():
                    break
            self.backoff.reset()  # a watch that ran to its timeout: the API server is fine
        finally:
            self._watch = None


# ---------------------------------------------------------------------------------------------
# Choosing what to sample


@dataclass(frozen=True)
class PodSelection:
    """Which pods to profile: namespaces to include (empty: all) and exclude, and required pod labels."""

    namespaces: frozenset[str] = frozenset()
    exclude_namespaces: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def everything(self) -> bool:
        return not (self.namespaces or self.exclude_namespaces or self.labels)

    def matches(self, pod: PodInfo) -> bool:
        if self.namespaces and pod.namespace not in self.namespaces:
            return False
        if pod.namespace in self.exclude_namespaces:
            return False
        return all(pod.labels.get(k) == v for k, v in self.labels.items())


def pod_cgroup_ids(resolver: CgroupResolver, pod_uids: Iterable[str]) -> set[int]:
    """Cgroup ids of these pods' own cgroups (the sampler's filter covers everything below them).

    Only cgroups that exist now: the resolver also remembers removed ones (for late samples), whose
    ids have no place in a filter.
    """
    from profiler.cgroups import parse_kubelet_path

    wanted = set(pod_uids)
    resolver.rescan()
    out = set()
    for cid, path in resolver.known().items():
        kc = parse_kubelet_path(path)
        if kc is not None and kc.container_id is None and kc.pod_uid in wanted and resolver.id_of(path) == cid:
            out.add(cid)
    return out
