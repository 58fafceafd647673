"""deploy/: every kustomize overlay renders, loads into the kubernetes client's typed models without
losing a field, and asks for no more than podflame needs (no privileged agent, read-only RBAC).

Rendering uses the real `kubectl kustomize` (no API server needed). The typed models are the
ones the `kubernetes` client deserializes API responses into, so a misspelled or misplaced
field shows up as a difference after the round trip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists())
AGENT_CAPS = {"BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE"}
READ_VERBS = {"get", "list", "watch"}


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian bookworm's kubernetes-client 1.20 is too old for these "
                    "kustomizations; any kubectl >= 1.21 works)")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str) -> dict:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_overlays_exist() -> None:
    assert OVERLAYS == ["cluster-wide", "namespace-only"]


def test_every_object_loads_into_the_typed_models_without_loss(rendered) -> None:
    from kubernetes.client import ApiClient

    api = ApiClient()
    _, objs = rendered
    assert {o["kind"] for o in objs} >= {"ServiceAccount", "DaemonSet", "Deployment", "Service",
                                         "PersistentVolumeClaim", "NetworkPolicy"}
    for obj in objs:
        version = obj["apiVersion"].rsplit("/", 1)[-1]
        model = f"{version[0].upper()}{version[1:]}{obj['kind']}"  # apps/v1 DaemonSet -> V1DaemonSet
        typed = api.deserialize(json.dumps(obj), model, "application/json")
        assert type(typed).__name__ == model
        assert api.sanitize_for_serialization(typed) == obj, f"{obj['kind']}/{obj['metadata']['name']} lost fields"


def test_agent_daemonset_is_not_privileged_and_has_what_it_needs(rendered) -> None:
    _, objs = rendered
    ds = one(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    (c,) = pod["containers"]
    assert not pod.get("initContainers")
    sc = c["securityContext"]
    assert sc.get("privileged") is not True
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == AGENT_CAPS
    # host paths: the cgroup tree and kernel headers, all read-only; only podflame's own symbol cache is written
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    cache = host.pop("symbol-cache")
    assert sorted(host.values()) == ["/lib/modules", "/sys/fs/cgroup", "/usr/src"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for name, path in host.items():
        assert mounts[name]["readOnly"] is True and mounts[name]["mountPath"] == path
    assert cache == "/var/cache/podflame-agent" and not mounts["symbol-cache"].get("readOnly")
    env_value = {e["name"]: e.get("value") for e in c["env"]}
    assert env_value["PODFLAME_SYMBOL_CACHE"] == mounts["symbol-cache"]["mountPath"]
    res = c["resources"]
    assert {"cpu", "memory"} <= res["requests"].keys() and {"cpu", "memory"} <= res["limits"].keys()
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod["serviceAccountName"] == "podflame-agent"


def test_agent_arguments_are_real_cli_options(rendered) -> None:
    from podflame.cli import main

    _, objs = rendered
    args = one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    command = main.commands[args[0]]
    known = {opt for p in command.params for opt in getattr(p, "opts", [])}
    for arg in args[1:]:
        assert arg.split("=", 1)[0] in known, f"podflame {args[0]} has no option {arg}"
    server_url = next(a.split("=", 1)[1] for a in args if a.startswith("--server="))
    svc = one(objs, "Service")
    assert server_url == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"


def test_rbac_grants_only_reading_pods_and_replicasets(rendered) -> None:
    overlay, objs = rendered
    roles = by_kind(objs, "Role") + by_kind(objs, "ClusterRole")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule
            assert set(rule["verbs"]) <= READ_VERBS
            groups, resources = rule["apiGroups"], rule["resources"]
            if resources == ["pods"]:
                assert groups == [""] and set(rule["verbs"]) == READ_VERBS
            else:
                assert (groups, resources, rule["verbs"]) == (["apps"], ["replicasets"], ["get"])
    bindings = by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding")
    agent_ns = one(objs, "DaemonSet")["metadata"]["namespace"]
    for b in bindings:
        assert b["roleRef"]["name"] in {r["metadata"]["name"] for r in roles if r["kind"] == b["roleRef"]["kind"]}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "podflame-agent", "namespace": agent_ns}]
    env = {e["name"] for e in one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["env"]}
    if overlay == "namespace-only":
        assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
        assert "PODFLAME_WATCH_NAMESPACE" in env  # a Role only allows listing its own namespace
    else:
        assert by_kind(objs, "ClusterRole") and "PODFLAME_WATCH_NAMESPACE" not in env


def test_server_deployment_service_and_volume_fit_together(rendered) -> None:
    _, objs = rendered
    dep, svc, pvc = one(objs, "Deployment"), one(objs, "Service"), one(objs, "PersistentVolumeClaim")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    (c,) = pod["spec"]["containers"]
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in c["ports"]}
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # a ReadWriteOnce volume has one writer at a time
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"] and not c["securityContext"].get("privileged")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_image_recipes_copy_only_what_exists() -> None:
    for name in ("agent.Dockerfile", "server.Dockerfile"):
        for line in (DEPLOY / "image" / name).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:  # --from: a file of an earlier build stage
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"


def test_agent_entrypoint_starts_podflame_when_headers_are_found(tmp_path: Path) -> None:
    script = DEPLOY / "image" / "agent-entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    fake = tmp_path / "podflame"
    fake.write_text('#!/bin/sh\necho "podflame $*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "BCC_KERNEL_SOURCE": "/usr/src/x"}
    out = subprocess.run([str(script), "agent", "--server=http://s:7070"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "podflame agent --server=http://s:7070"


def test_agent_probes_ask_the_agents_own_health_endpoint_with_room_to_start(rendered) -> None:
    from profiler.health import AgentHealth

    _, objs = rendered
    (c,) = one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    metrics_arg = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--metrics="))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    interval = float(next((a.split("=", 1)[1] for a in c["args"] if a.startswith("--interval=")), 10.0))
    stale_after = AgentHealth(interval).stale_after
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports[get["port"]] == int(metrics_arg.rsplit(":", 1)[1])
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # BCC compiles for seconds
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live.get("failureThreshold", 3) > stale_after  # a slow drain is no restart


class FakeAgent:
    last_drain_at = None


def test_agent_health_answers_from_recent_drains() -> None:
    from profiler.health import AgentHealth

    now = [1000.0]
    health = AgentHealth(10.0, clock=lambda: now[0])
    assert health.check() == (503, {"status": "starting", "last_drain_seconds_ago": None,
                                    "stale_after_seconds": 30.0})
    agent, thread = FakeAgent(), _Thread(alive=True)
    health.attach(agent, thread)
    assert health.check()[0] == 200  # sampling, first drain not due yet
    now[0] += 31
    code, body = health.check()
    assert code == 503 and body["status"] == "stale"  # no drain for 3 intervals
    agent.last_drain_at = now[0] - 2
    code, body = health.check()
    assert code == 200 and body == {"status": "ok", "last_drain_seconds_ago": 2.0, "stale_after_seconds": 30.0}
    thread.alive = False
    assert health.check() == (503, {"status": "stopped", "last_drain_seconds_ago": 2.0, "stale_after_seconds": 30.0})
    assert AgentHealth(60.0).stale_after == 180.0


def test_agent_health_says_how_many_selected_pods_the_filter_holds() -> None:
    """With a pod selection, a healthy agent sampling nothing (no selected pod here yet) says so."""
    from profiler.health import AgentHealth

    class Filter:
        selected: int | None = None

    health, selection = AgentHealth(10.0), Filter()
    health.attach(FakeAgent(), _Thread(alive=True), selection=selection)
    assert health.check()[1]["selected_pod_cgroups"] is None  # before the first refresh
    selection.selected = 0
    assert health.check() == (200, {"status": "ok", "last_drain_seconds_ago": None, "stale_after_seconds": 30.0,
                                    "selected_pod_cgroups": 0})
    health.attach(FakeAgent(), _Thread(alive=True))  # no selection: no such field
    assert "selected_pod_cgroups" not in health.check()[1]


class _Thread:
    def __init__(self, alive: bool) -> None:
        self.alive = alive

    def is_alive(self) -> bool:
        return self.alive


def test_agent_http_serves_metrics_and_health() -> None:
    import urllib.error
    import urllib.request

    from profiler.health import AgentHealth, serve_agent_http

    health = AgentHealth(1.0)
    server = serve_agent_http("127.0.0.1", 0, health)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/healthz", timeout=5)
        assert e.value.code == 503 and json.loads(e.value.read())["status"] == "starting"
        agent = FakeAgent()
        health.attach(agent, _Thread(alive=True))
        agent.last_drain_at = health.clock()
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            assert "podflame_agent_drains_total" in r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/other", timeout=5)
        assert e.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def _secret_files(pod: dict, container: dict) -> dict[str, str]:
    """Paths in the container of each key of the podflame-tokens Secret."""
    volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    out = {}
    for m in container["volumeMounts"]:
        secret = volumes.get(m["name"])
        if secret is None or secret["secretName"] != "podflame-tokens":
            continue
        assert m["readOnly"] is True
        items = secret.get("items") or [{"key": k, "path": k} for k in ("ingest", "read")]
        out.update({i["key"]: f"{m['mountPath']}/{i['path']}" for i in items})
    return out


def test_token_secret_is_wired_into_server_and_agent(rendered) -> None:
    from podflame.cli import main

    _, objs = rendered
    dep = one(objs, "Deployment")["spec"]["template"]["spec"]
    (server,) = dep["containers"]
    known = {opt for p in main.commands["server"].params for opt in getattr(p, "opts", [])}
    args = dict(a.split("=", 1) for a in server["args"][1:])
    assert set(args) <= known
    assert "--insecure" not in args  # a reachable server has tokens
    files = _secret_files(dep, server)
    assert args["--ingest-token-file"] == files["ingest"] and args["--read-token-file"] == files["read"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ds = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = ds["containers"]
    agent_files = _secret_files(ds, agent)
    assert set(agent_files) == {"ingest"}  # an agent cannot read profiles
    token_arg = next(a.split("=", 1)[1] for a in agent["args"] if a.startswith("--token-file="))
    assert token_arg.split()[0] == agent_files["ingest"]
    assert not by_kind(objs, "Secret")  # no token in the repository: the operator creates it


def test_network_policy_lets_agents_and_labelled_clients_reach_the_server(rendered) -> None:
    _, objs = rendered
    policy = one(objs, "NetworkPolicy")
    dep = one(objs, "Deployment")
    server_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(server_labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    agent_labels = one(objs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    sources = [f for f in rule["from"] if "namespaceSelector" not in f]
    assert any(all(agent_labels.get(k) == v for k, v in f["podSelector"]["matchLabels"].items()) for f in sources)
    clients = [f for f in rule["from"] if "namespaceSelector" in f]
    assert clients and clients[0]["podSelector"]["matchLabels"] == {"podflame.io/client": "true"}
