"""deploy/clickhouse: N stateless servers on an external ClickHouse render with the real `kubectl kustomize`,
hold no volume of their own, and take the store and its credentials from what the overlay names."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from web.store.dsn import layout_of, print_ddl_of


@pytest.fixture(scope="module")
def objs() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "clickhouse")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def test_servers_are_replicated_stateless_and_use_the_secret(objs: list[dict]) -> None:
    kinds = [o["kind"] for o in objs]
    assert "PersistentVolumeClaim" not in kinds
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] >= 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = dep["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    (c,) = pod["containers"]
    dsn = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--store="))
    layout = layout_of(dsn)
    assert dsn.startswith("clickhouse://") and layout.database == "podflame" and layout.retention_seconds
    assert "CREATE TABLE IF NOT EXISTS podflame.samples" in print_ddl_of(dsn)
    (ref,) = [e["secretRef"]["name"] for e in c["envFrom"]]
    (secret,) = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == ref]
    assert set(secret["stringData"]) == {"PODFLAME_CLICKHOUSE_USER", "PODFLAME_CLICKHOUSE_PASSWORD"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Unready while ClickHouse is away (/readyz), never restarted for it (/healthz stays 200); the replicas
    # listen beyond loopback, so they carry the token files like the base.
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert any(a.startswith("--ingest-token-file=") for a in c["args"])
    assert any(a.startswith("--read-token-file=") for a in c["args"])
