"""A stand-in Kubernetes API server for tests: real pod JSON over real HTTP, for the real client.

No API server can run on these machines, so this serves the few endpoints the agent uses, the
way kube-apiserver does: `GET /api/v1/pods` (list, with resourceVersion, fieldSelector on
spec.nodeName, limit/continue paging) and the same path with `watch=true` (a chunked stream of
one JSON event per line: ADDED/MODIFIED/DELETED/BOOKMARK, or a single ERROR event with a
410 Status when the requested resourceVersion is too old), plus `GET` of a ReplicaSet.
Tests script it: add/modify/delete pods, expire watches once, fail lists with 500.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

TOKEN = "standin-token"


def pod_json(name: str, namespace: str = "shop", *, node: str = "node-1", uid: str | None = None,
             containers: list[tuple[str, str, str]] = (), owner: tuple[str, str] | None = None,
             labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
             last_ids: dict[str, str] | None = None, runtime: str = "containerd") -> dict[str, Any]:
    """A pod as `kubectl get pod -o json` shows a running one. containers: (name, image, container id)."""
    uid = uid or str(uuid.uuid4())
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace, "uid": uid, "resourceVersion": "0",
        "creationTimestamp": "2026-11-24T10:00:00Z", "labels": dict(labels or {}),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner:
        meta["generateName"] = name.rsplit("-", 1)[0] + "-"
        meta["ownerReferences"] = [{"apiVersion": "apps/v1" if owner[0] != "Node" else "v1", "kind": owner[0],
                                    "name": owner[1], "uid": str(uuid.uuid4()), "controller": True,
                                    "blockOwnerDeletion": True}]
    statuses = []
    for cname, image, cid in containers:
        st: dict[str, Any] = {
            "name": cname, "image": image, "imageID": f"{image.split(':')[0]}@sha256:{'ab' * 32}",
            "containerID": f"{runtime}://{cid}", "ready": True, "restartCount": 0, "started": True,
            "state": {"running": {"startedAt": "2026-11-24T10:00:05Z"}}, "lastState": {},
        }
        if last_ids and cname in last_ids:
            st["restartCount"] = 1
            st["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                              "startedAt": "2026-11-24T10:00:05Z",
                                              "finishedAt": "2026-11-24T10:05:00Z",
                                              "containerID": f"{runtime}://{last_ids[cname]}"}}
        statuses.append(st)
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": meta,
        "spec": {
            "containers": [{"name": c, "image": i, "imagePullPolicy": "IfNotPresent",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File"} for c, i, _ in containers],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "nodeName": node,
            "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
            "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.11", "hostIPs": [{"ip": "10.0.0.11"}], "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}], "startTime": "2026-11-24T10:00:00Z", "qosClass": "Burstable",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": "2026-11-24T10:00:06Z"}],
            "containerStatuses": statuses,
        },
    }


def replicaset_json(name: str, namespace: str, owner: tuple[str, str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "resourceVersion": "7"}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "argoproj.io/v1alpha1", "kind": owner[0], "name": owner[1],
                                    "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}]
    return {"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": meta,
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}}, "status": {"replicas": 1}}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class StandInApiServer:
    """The state and script of the fake API server; `url` once started by `standin_api()`."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 1000
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.replicasets: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.page_size: int | None = None
        self.fail_lists = 0  # answer this many list requests with 500
        self.gone_once = False  # answer the next watch with a 410 ERROR event
        self.compacted_below = 0  # watches from an older resourceVersion get 410
        self.closing = False
        self.url = ""

    # -- script

    def _bump(self, kind: str, pod: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            self.rv += 1
            pod = copy.deepcopy(pod)
            pod["metadata"]["resourceVersion"] = str(self.rv)
            uid = pod["metadata"]["uid"]
            if kind == "DELETED":
                self.pods.pop(uid, None)
            else:
                self.pods[uid] = pod
            self.events.append((self.rv, kind, pod))
            self.cond.notify_all()
            return pod

    def add(self, pod: dict[str, Any]) -> dict[str, Any]:
        return self._bump("ADDED", pod)

    def modify(self, pod: dict[str, Any]) -> dict[str, Any]:
        return self._bump("MODIFIED", pod)

    def delete(self, pod: dict[str, Any]) -> dict[str, Any]:
        return self._bump("DELETED", pod)

    def compact(self) -> None:
        """Forget history: every watch from a resourceVersion before now gets 410, as after etcd compaction."""
        with self.cond:
            self.compacted_below = self.rv + 1
            self.events.clear()

    def count(self, watch: bool) -> int:
        return sum(1 for path, q in self.requests
                   if path.endswith("/pods") and (q.get("watch", ["false"])[0] == "true") == watch)

    # -- serving

    def list_pods(self, q: dict[str, list[str]], namespace: str | None = None) -> tuple[int, dict[str, Any]]:
        with self.cond:
            if self.fail_lists > 0:
                self.fail_lists -= 1
                return 500, _status(500, "InternalError", "etcdserver: request timed out")
            node = _node_selector(q)
            items = sorted((p for p in self.pods.values() if _selected(p, node, namespace)),
                           key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
            start = int(q.get("continue", ["0"])[0] or 0)
            size = self.page_size or int(q.get("limit", [0])[0] or 0) or len(items) or 1
            page = items[start:start + size]
            meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
            if start + size < len(items):
                meta["continue"] = str(start + size)
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": copy.deepcopy(page)}

    def watch_events(self, q: dict[str, list[str]], namespace: str | None = None) -> Iterator[dict[str, Any]]:
        node = _node_selector(q)
        since = int(q.get("resourceVersion", ["0"])[0] or 0)
        deadline = time.monotonic() + float(q.get("timeoutSeconds", ["30"])[0])
        with self.cond:
            if self.gone_once or since < self.compacted_below:
                self.gone_once = False
                yield {"type": "ERROR", "object": _status(410, "Expired",
                                                          f"too old resource version: {since} ({self.rv})")}
                return
        while not self.closing:
            with self.cond:
                ready = [(rv, k, p) for rv, k, p in self.events if rv > since]
                if not ready:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self.cond.wait(min(left, 0.2))
                    continue
            for rv, kind, pod in ready:
                since = rv
                if _selected(pod, node, namespace):
                    yield {"type": kind, "object": pod}


def _selected(pod: dict[str, Any], node: str | None, namespace: str | None) -> bool:
    return ((node is None or pod["spec"].get("nodeName") == node)
            and (namespace is None or pod["metadata"]["namespace"] == namespace))


def _node_selector(q: dict[str, list[str]]) -> str | None:
    sel = q.get("fieldSelector", [""])[0]
    return sel.split("=", 1)[1] if sel.startswith("spec.nodeName=") else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        api: StandInApiServer = self.server.api
        url = urlparse(self.path)
        q = parse_qs(url.query)
        api.requests.append((url.path, q))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        parts = url.path.strip("/").split("/")
        namespace = parts[3] if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] else None
        pods_path = url.path == "/api/v1/pods" or (namespace is not None and parts[4] == "pods")
        if pods_path and q.get("watch", ["false"])[0] == "true":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for event in api.watch_events(q, namespace):
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        if pods_path:
            self._json(*api.list_pods(q, namespace))
            return
        if len(parts) == 7 and parts[:3] == ["apis", "apps", "v1"] and parts[5] == "replicasets":
            rs = api.replicasets.get((parts[4], parts[6]))
            if rs is None:
                self._json(404, _status(404, "NotFound", f'replicasets.apps "{parts[6]}" not found'))
            else:
                self._json(200, rs)
            return
        self._json(404, _status(404, "NotFound", "the server could not find the requested resource"))


@contextmanager
def standin_api(tmp_path: Path) -> Iterator[tuple[StandInApiServer, Path]]:
    """The stand-in on 127.0.0.1 in a thread, and a kubeconfig file pointing the real client at it."""
    api = StandInApiServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.api = api
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{httpd.server_port}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": api.url}}],
        "users": [{"name": "agent", "user": {"token": TOKEN}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "agent"}}],
    }))
    try:
        yield api, kubeconfig
    finally:
        with api.cond:
            api.closing = True
            api.cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
