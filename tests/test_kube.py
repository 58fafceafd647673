"""Pod metadata: the index's rules alone, then the real `kubernetes` client against a stand-in API server.

The stand-in (tests/kube_standin.py) speaks HTTP on 127.0.0.1 with real pod JSON; the client
finds it through a generated kubeconfig ($KUBECONFIG), as the agent would outside a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from profiler.cgroups import CgroupResolver, parse_kubelet_path
from profiler.kube import (
    Backoff,
    KubeMetadata,
    PodIndex,
    PodSelection,
    label_name,
    load_api_client,
    pod_cgroup_ids,
    workload_by_convention,
)
from profiler.selection import MATCH_NOTHING, PodCgroupFilter, parse_selection
from tests.kube_standin import TOKEN, pod_json, replicaset_json, standin_api

CART_APP = "a1" * 32
CART_SIDECAR = "b2" * 32
CART_UID = "7c0e3b5e-8f55-4c55-9a43-2d1e0c3b9a10"


def cart(**kw) -> dict:
    return pod_json("cart-7d9f8b6c5d-x2x9q", "shop", uid=CART_UID,
                    containers=[("app", "registry.example/shop/cart:1.4.2", CART_APP),
                                ("envoy", "envoyproxy/envoy:v1.31.0", CART_SIDECAR)],
                    owner=("ReplicaSet", "cart-7d9f8b6c5d"),
                    labels={"app.kubernetes.io/name": "cart", "pod-template-hash": "7d9f8b6c5d", "team": "payments"},
                    **kw)


def eventually(check: Callable[[], object], timeout: float = 10.0) -> object:
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.02)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------------------------------------
# Pure rules


def test_label_names_follow_prometheus_rules() -> None:
    assert label_name("app.kubernetes.io/name") == "app_kubernetes_io_name"
    assert label_name("team-name") == "team_name"
    assert label_name("9lives") == "_9lives"


def test_workload_by_name_convention() -> None:
    assert workload_by_convention(cart()) == "Deployment/cart"
    sts = pod_json("db-0", owner=("StatefulSet", "db"))
    assert workload_by_convention(sts) == "StatefulSet/db"
    bare_rs = pod_json("x-abcde", owner=("ReplicaSet", "x"), labels={})
    assert workload_by_convention(bare_rs) == "ReplicaSet/x"
    assert workload_by_convention(pod_json("static-node-1", owner=("Node", "node-1"))) is None
    assert workload_by_convention(pod_json("bare")) is None


def test_index_keeps_deleted_pods_and_replaced_container_ids_for_a_while() -> None:
    clock = Clock()
    idx = PodIndex(keep_deleted=60, clock=clock)
    idx.upsert(cart())
    assert idx.container(CART_APP)[1].name == "app"
    # the app container restarts: new id; the old id stays known for samples drained late
    new_id = "c3" * 32
    restarted = pod_json("cart-7d9f8b6c5d-x2x9q", "shop", uid=CART_UID,
                         containers=[("app", "registry.example/shop/cart:1.4.2", new_id),
                                     ("envoy", "envoyproxy/envoy:v1.31.0", CART_SIDECAR)],
                         owner=("ReplicaSet", "cart-7d9f8b6c5d"), last_ids={"app": CART_APP})
    idx.upsert(restarted)
    assert idx.container(new_id)[1].name == "app" and idx.container(CART_APP)[1].name == "app"
    restarted["status"]["containerStatuses"][0]["lastState"] = {}  # a second restart drops it from status
    idx.upsert(restarted)
    clock.t += 30
    idx.purge()
    assert idx.container(CART_APP) is not None
    clock.t += 31
    idx.purge()
    assert idx.container(CART_APP) is None and idx.container(new_id) is not None
    # deletion: resolvable for keep_deleted, then gone
    idx.delete(restarted)
    clock.t += 59
    idx.purge()
    assert idx.pod(CART_UID).deleted_at is not None and idx.container(new_id) is not None
    clock.t += 2
    idx.purge()
    assert idx.pod(CART_UID) is None and idx.container(new_id) is None


def test_relist_marks_vanished_pods_deleted_and_static_pods_resolve_by_config_hash() -> None:
    clock = Clock()
    idx = PodIndex(keep_deleted=10, clock=clock)
    idx.replace_all([cart()])
    mirror = pod_json("etcd-node-1", "kube-system", owner=("Node", "node-1"),
                      containers=[("etcd", "registry.k8s.io/etcd:3.5.15-0", "d4" * 32)],
                      annotations={"kubernetes.io/config.mirror": "8daa50c3a64c9ff60bb9eab7b44b56fd",
                                   "kubernetes.io/config.hash": "8daa50c3a64c9ff60bb9eab7b44b56fd"})
    idx.replace_all([mirror])
    assert idx.pod(CART_UID).deleted_at == clock.t
    assert idx.pod("8daa50c3a64c9ff60bb9eab7b44b56fd").name == "etcd-node-1"


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(base=1, cap=8)
    delays = [b.next() for _ in range(6)]
    assert 0.5 <= delays[0] <= 1 and 4 <= delays[-1] <= 8
    b.reset()
    assert b.next() <= 1


def test_pod_selection() -> None:
    idx = PodIndex()
    idx.upsert(cart())
    pod = idx.pod(CART_UID)
    assert PodSelection().everything and PodSelection().matches(pod)
    assert PodSelection(namespaces=frozenset({"shop"}), labels={"team": "payments"}).matches(pod)
    assert not PodSelection(exclude_namespaces=frozenset({"shop"})).matches(pod)
    assert not PodSelection(labels={"team": "search"}).matches(pod)


def test_pod_cgroup_ids_pick_the_pod_level_cgroup(tmp_path: Path) -> None:
    pod_dir = tmp_path / "kubepods.slice" / "kubepods-burstable.slice" / \
        f"kubepods-burstable-pod{CART_UID.replace('-', '_')}.slice"
    (pod_dir / f"cri-containerd-{CART_APP}.scope").mkdir(parents=True)
    (tmp_path / "kubepods.slice" / "kubepods-pod0e0e0e0e_1111_2222_3333_444444444444.slice").mkdir()
    assert pod_cgroup_ids(CgroupResolver(tmp_path), [CART_UID]) == {pod_dir.stat().st_ino}


def test_pod_cgroup_ids_skip_cgroups_removed_since(tmp_path: Path) -> None:
    pod_dir = tmp_path / "kubepods.slice" / f"kubepods-pod{CART_UID.replace('-', '_')}.slice"
    pod_dir.mkdir(parents=True)
    resolver = CgroupResolver(tmp_path)
    assert pod_cgroup_ids(resolver, [CART_UID]) == {pod_dir.stat().st_ino}
    pod_dir.rmdir()  # the resolver keeps its path for late samples; the filter must not
    assert pod_cgroup_ids(resolver, [CART_UID]) == set()


class FilterSpy:
    def __init__(self) -> None:
        self.calls: list[frozenset[int]] = []

    def set_cgroup_filter(self, ids) -> None:
        self.calls.append(frozenset(ids))


class FakeKube:
    def __init__(self, pods=(), synced=True) -> None:
        self.index = PodIndex()
        for p in pods:
            self.index.upsert(p)
        self.synced = synced

    def pods(self):
        return self.index.pods()


def test_selection_options_parse_and_the_watched_namespace_bounds_them() -> None:
    sel = parse_selection("shop, payments", "kube-system", "team=payments,tier==web")
    assert sel.namespaces == {"shop", "payments"} and sel.exclude_namespaces == {"kube-system"}
    assert sel.labels == {"team": "payments", "tier": "web"}
    assert parse_selection().everything
    assert parse_selection(watch_namespace="shop").namespaces == {"shop"}
    assert parse_selection("shop", watch_namespace="shop").namespaces == {"shop"}
    with pytest.raises(ValueError, match="outside the watched namespace"):
        parse_selection("payments", watch_namespace="shop")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_selection(pod_selector="team")


def test_cgroup_filter_holds_selected_pods_and_means_nothing_when_none_is_selected(tmp_path: Path) -> None:
    def pod_slice(uid: str) -> Path:
        d = tmp_path / "kubepods.slice" / f"kubepods-pod{uid.replace('-', '_')}.slice"
        (d / f"cri-containerd-{uid[:8] * 8}.scope").mkdir(parents=True)
        return d

    etcd_hash = "8daa50c3a64c9ff60bb9eab7b44b56fd"
    cart_dir, etcd_dir = pod_slice(CART_UID), pod_slice(etcd_hash)
    etcd = pod_json("etcd-node-1", "kube-system", owner=("Node", "node-1"),
                    annotations={"kubernetes.io/config.mirror": etcd_hash})
    kube, spy = FakeKube([cart(), etcd], synced=False), FilterSpy()
    f = PodCgroupFilter(spy, kube, parse_selection("shop"), CgroupResolver(tmp_path))
    assert f.initial_ids() == [MATCH_NOTHING]
    assert f.selected is None  # what /healthz shows before the first refresh
    # before the first list: sample nothing (an empty filter would mean everything)
    assert f.refresh() == {MATCH_NOTHING} and spy.calls == [{MATCH_NOTHING}]
    assert f.selected == 0
    kube.synced = True
    assert f.refresh() == {cart_dir.stat().st_ino} and f.selected == 1
    f.refresh()
    assert len(spy.calls) == 2  # unchanged: the kernel is not touched again
    # a static pod is found by its config hash, which names its cgroup
    f2 = PodCgroupFilter(FilterSpy(), kube, parse_selection("kube-system"), CgroupResolver(tmp_path))
    assert f2.refresh() == {etcd_dir.stat().st_ino}
    # a selection matching no pod: still nothing, never everything
    f3 = PodCgroupFilter(FilterSpy(), kube, parse_selection("nowhere"), CgroupResolver(tmp_path))
    assert f3.refresh() == {MATCH_NOTHING}
    # the pod is gone from the node: back to nothing
    next(cart_dir.iterdir()).rmdir()
    cart_dir.rmdir()
    assert f.refresh() == {MATCH_NOTHING} and spy.calls[-1] == {MATCH_NOTHING}
    with pytest.raises(ValueError):
        PodCgroupFilter(spy, kube, PodSelection(), CgroupResolver(tmp_path))


# ---------------------------------------------------------------------------------------------
# Configuration


def test_without_cluster_config_there_is_no_client(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert load_api_client() is None


def test_in_cluster_config_uses_the_service_account(tmp_path: Path, monkeypatch) -> None:
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api = load_api_client()
    assert api.configuration.host == "https://10.96.0.1:443"
    auth = api.configuration.auth_settings()["BearerToken"]
    assert (auth["in"], auth["key"], auth["value"].lower()) == ("header", "authorization", "bearer sa-token")


# ---------------------------------------------------------------------------------------------
# The real client against the stand-in


@pytest.fixture
def standin(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with standin_api(tmp_path) as (api, kubeconfig):
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield api


def start(**kw) -> KubeMetadata:
    client = load_api_client()
    assert client is not None
    meta = KubeMetadata("node-1", client, label_allowlist=["app.kubernetes.io/name", "namespace"],
                        watch_timeout=1, backoff=Backoff(base=0.05, cap=0.2), **kw)
    meta.start()
    assert meta.wait_synced(10)
    return meta


def test_list_then_watch_adds_modifies_and_deletes(standin) -> None:
    standin.add(cart())
    standin.add(pod_json("search-0", "search", node="node-2", containers=[("app", "search:1", "e5" * 32)]))
    meta = start()
    try:
        lists = [q for path, q in standin.requests if path == "/api/v1/pods" and "watch" not in q]
        assert lists[0]["fieldSelector"] == ["spec.nodeName=node-1"]
        assert meta.resolve(CART_APP, CART_UID) == {
            "namespace": "shop", "pod": "cart-7d9f8b6c5d-x2x9q", "container": "app", "node": "node-1",
            "workload": "Deployment/cart", "image": "registry.example/shop/cart:1.4.2",
            "app_kubernetes_io_name": "cart"}  # an allow-listed "namespace" label never overrides ours
        assert meta.resolve(CART_SIDECAR, CART_UID)["container"] == "envoy"
        assert meta.resolve("e5" * 32, None) is None  # other node's pod: not listed
        assert meta.resolve(None, CART_UID)["pod"] == "cart-7d9f8b6c5d-x2x9q"

        # ADDED while watching: unknown at first (the caller holds its samples), then resolved
        checkout = pod_json("checkout-5c6d7f8b9-abcde", "shop", uid="11111111-2222-3333-4444-555555555555",
                            containers=[("app", "shop/checkout:2.0", "f6" * 32)],
                            owner=("ReplicaSet", "checkout-5c6d7f8b9"), labels={"pod-template-hash": "5c6d7f8b9"})
        assert meta.resolve("f6" * 32, "11111111-2222-3333-4444-555555555555") is None
        standin.add(checkout)
        assert eventually(lambda: meta.resolve("f6" * 32, None))["workload"] == "Deployment/checkout"

        # MODIFIED: a restart gives the container a new id; both ids resolve
        restarted = cart(last_ids={"app": CART_APP})
        restarted["status"]["containerStatuses"][0]["containerID"] = "containerd://" + "0a" * 32
        standin.modify(restarted)
        assert eventually(lambda: meta.resolve("0a" * 32, CART_UID))["container"] == "app"
        assert meta.resolve(CART_APP, CART_UID)["container"] == "app"

        # DELETED before the agent's drain: still resolvable
        standin.delete(checkout)
        assert eventually(lambda: meta.index.pod("11111111-2222-3333-4444-555555555555").deleted_at)
        assert meta.resolve("f6" * 32, None)["pod"] == "checkout-5c6d7f8b9-abcde"
        assert standin.count(watch=True) >= 1 and meta.lists == 1
    finally:
        meta.stop()


def test_watch_expiry_410_relists_and_catches_up(standin) -> None:
    standin.add(cart())
    meta = start()
    try:
        eventually(lambda: standin.count(watch=True) >= 1)
        # history compacted past our resourceVersion while a pod came and one went
        late = pod_json("late-1", "shop", containers=[("app", "late:1", "0b" * 32)])
        standin.add(late)
        standin.compact()
        standin.gone_once = True
        assert eventually(lambda: meta.lists >= 2), "no relist after 410 Gone"
        assert eventually(lambda: meta.resolve("0b" * 32, None))["pod"] == "late-1"
        # after the relist the watch resumes from the new resourceVersion
        standin.delete(late)
        assert eventually(lambda: meta.index.pod(late["metadata"]["uid"]).deleted_at)
        assert meta.errors == 0
    finally:
        meta.stop()


def test_errors_back_off_and_recover_and_lists_page(standin) -> None:
    standin.fail_lists = 2
    standin.page_size = 1
    standin.add(cart())
    standin.add(pod_json("a-0", "shop", containers=[("app", "a:1", "0c" * 32)]))
    standin.add(pod_json("b-0", "shop", containers=[("app", "b:1", "0d" * 32)]))
    meta = start()
    try:
        assert meta.errors == 2
        assert meta.resolve("0c" * 32, None) and meta.resolve("0d" * 32, None) and meta.resolve(CART_APP, None)
        pages = [q for path, q in standin.requests if path == "/api/v1/pods" and "continue" in q]
        assert len(pages) == 2
    finally:
        meta.stop()


def test_replicaset_owner_looked_up_when_the_name_does_not_tell(standin) -> None:
    standin.replicasets[("shop", "cart-rollout-6f9")] = replicaset_json("cart-rollout-6f9", "shop",
                                                                          ("Rollout", "cart"))
    standin.add(pod_json("cart-rollout-6f9-abc", "shop", containers=[("app", "cart:2", "0e" * 32)],
                         owner=("ReplicaSet", "cart-rollout-6f9"), labels={"rollouts-pod-template-hash": "6f9"}))
    standin.add(pod_json("orphan-xyz", "shop", containers=[("app", "o:1", "0f" * 32)],
                         owner=("ReplicaSet", "orphan"), labels={}))
    meta = start()
    try:
        assert meta.resolve("0e" * 32, None)["workload"] == "Rollout/cart"
        assert meta.resolve("0f" * 32, None)["workload"] == "ReplicaSet/orphan"  # 404: keep the ReplicaSet
        gets = [p for p, _ in standin.requests if "/replicasets/" in p]
        assert sorted(gets) == ["/apis/apps/v1/namespaces/shop/replicasets/cart-rollout-6f9",
                                "/apis/apps/v1/namespaces/shop/replicasets/orphan"]
    finally:
        meta.stop()


def test_labels_for_a_kubelet_cgroup_best_effort(standin) -> None:
    standin.add(cart())
    meta = start()
    try:
        path = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{CART_UID.replace('-', '_')}.slice/"
                f"cri-containerd-{CART_APP}.scope")
        assert meta.labels_for(parse_kubelet_path(path))["container"] == "app"
        # the pause container is in no status: pod-level labels, no container
        pause = path.replace(CART_APP, "9" * 64)
        assert meta.resolve("9" * 64, CART_UID) is None
        assert meta.labels_for(parse_kubelet_path(pause)) == {
            "namespace": "shop", "pod": "cart-7d9f8b6c5d-x2x9q", "node": "node-1", "workload": "Deployment/cart",
            "app_kubernetes_io_name": "cart"}
        unknown = pause.replace(CART_UID.replace("-", "_"), "0" * 32)
        assert meta.labels_for(parse_kubelet_path(unknown)) == {}
    finally:
        meta.stop()


def test_stand_in_rejects_a_client_without_the_token(standin) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    cfg = client.Configuration()
    cfg.host = standin.url
    with pytest.raises(ApiException) as e:
        client.CoreV1Api(client.ApiClient(cfg)).list_pod_for_all_namespaces()
    assert e.value.status == 401 and TOKEN not in str(e.value)


def test_namespace_only_watch_from_the_environment(standin, monkeypatch) -> None:
    """The "namespace-only" overlay: a Role in one namespace, so the agent lists and watches only there."""
    monkeypatch.setenv("PODFLAME_WATCH_NAMESPACE", "shop")
    monkeypatch.setenv("PODFLAME_POD_LABELS", "app.kubernetes.io/name, team")
    standin.add(cart())
    standin.add(pod_json("search-0", "search", containers=[("app", "search:1", "e5" * 32)]))
    meta = KubeMetadata.from_environment("node-1", watch_timeout=1)
    meta.start()
    try:
        assert meta.wait_synced(10)
        assert meta.resolve(CART_APP, None)["team"] == "payments"
        assert meta.resolve("e5" * 32, None) is None
        standin.add(pod_json("search-1", "search", containers=[("app", "search:1", "e6" * 32)]))
        standin.add(pod_json("cart-2", "shop", containers=[("app", "cart:1", "e7" * 32)]))
        assert eventually(lambda: meta.resolve("e7" * 32, None))
        assert meta.resolve("e6" * 32, None) is None
        paths = {p for p, _ in standin.requests}
        assert paths == {"/api/v1/namespaces/shop/pods"}
    finally:
        meta.stop()


def test_from_environment_without_a_cluster_is_none(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert KubeMetadata.from_environment("node-1") is None


def test_agent_refuses_a_pod_selection_without_the_kubernetes_api(monkeypatch) -> None:
    from click.testing import CliRunner

    from podflame.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    result = CliRunner().invoke(main, ["agent", "--server", "http://127.0.0.1:9", "--namespaces", "shop"])
    assert result.exit_code == 2 and "needs the Kubernetes API" in result.output
    result = CliRunner().invoke(main, ["agent", "--server", "http://127.0.0.1:9", "--pod-selector", "team"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
