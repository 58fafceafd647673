"""Real profiles from other projects (../shared/corpus/pprof) through ingest, checked against `go tool pprof`.

For each file: the merged total of every sample type equals the sum of `go tool pprof -raw`'s
Samples section, and our pprof download, read by `go tool pprof -top`, shows the same total and
the same flat/cum value for every function as the original file does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import CORPUS
from web.server.app import create_app

PPROF_DIR = CORPUS / "pprof"
FILES = sorted(PPROF_DIR.glob("*.pb.gz")) if PPROF_DIR.is_dir() else []
SERIES = sorted((PPROF_DIR / "series").glob("*.pb.gz")) if PPROF_DIR.is_dir() else []
EVERYTHING = {"from": "0", "to": "now+1h"}
_SAMPLE_LINE = re.compile(r"\s*(-?\d+(?:\s+-?\d+)*):")
_TOTAL = re.compile(r"of (\S+) total")


def _go(*args: str | Path) -> str:
    if not shutil.which("go"):
        pytest.fail("go tool pprof (Debian golang-go, installed by scripts/setup.sh) is the oracle of these tests")
    return subprocess.run(["go", "tool", "pprof", *map(str, args)], capture_output=True, text=True, check=True).stdout


def raw_totals(paths: Sequence[Path]) -> dict[str, int]:
    """Per sample type, the sum over `go tool pprof -raw`'s Samples section (several files: pprof merges them)."""
    lines = _go("-raw", *paths).splitlines()
    start = lines.index("Samples:")
    types = [t.removesuffix("[dflt]").split("/")[0] for t in lines[start + 1].split()]
    totals = [0] * len(types)
    for line in lines[start + 2:]:
        if line.startswith(("Locations", "Mappings")):
            break
        m = _SAMPLE_LINE.match(line)
        if m:
            for i, v in enumerate(m.group(1).split()):
                totals[i] += int(v)
    return dict(zip(types, totals, strict=True))


def top_table(paths: Sequence[Path], sample_type: str) -> tuple[str, list[tuple[str, ...]]]:
    """`go tool pprof -top` over every node: the displayed total and (flat, cum, name) rows."""
    out = _go("-top", "-nodefraction=0", "-nodecount=1000000", f"-sample_index={sample_type}", *paths)
    total = _TOTAL.search(out)
    assert total, out
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[1].endswith("%") and parts[4].endswith("%"):
            # pprof calls a nameless function <unknown>; our decoder names it function#ID
            rows.append((parts[0], parts[3], re.sub(r"^function#\d+", "<unknown>", parts[5])))
    return total.group(1), sorted(rows)


@pytest.fixture
def app(tmp_path: Path, corpus: Path) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path / "data")})
    yield app
    app.extensions["podflame.store"].close()


def _ingest(client: FlaskClient, paths: Sequence[Path]) -> None:
    for path in paths:
        r = client.post("/api/v1/ingest", data=path.read_bytes())
        assert r.status_code == 200, (path.name, r.json)


def _check(client: FlaskClient, paths: Sequence[Path], tmp_path: Path, params: dict[str, str]) -> None:
    expected = raw_totals(paths)
    types = {t["type"] for t in client.get("/api/v1/types", query_string=params).json["types"]}
    assert types == {t for t, v in expected.items() if v}, "sample types differ from go tool pprof -raw"
    for sample_type in sorted(types):
        q = {**params, "type": sample_type}
        series = client.get("/api/v1/series", query_string=q).json
        fg = client.get("/api/v1/flamegraph", query_string=q).json
        assert series["total"] == fg["total"] == expected[sample_type], sample_type
        download = tmp_path / f"{sample_type}.pb.gz"
        download.write_bytes(client.get("/api/v1/pprof", query_string=q).data)
        want_total, want_rows = top_table(paths, sample_type)
        got_total, got_rows = top_table([download], sample_type)
        assert got_total == want_total, sample_type
        assert got_rows == want_rows, f"{sample_type}: per-function flat/cum differ from the original"


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_each_corpus_file(app: Flask, path: Path, tmp_path: Path) -> None:
    client = app.test_client()
    _ingest(client, [path])
    _check(client, [path], tmp_path, EVERYTHING)


def test_time_series_whole_and_partial_ranges(app: Flask, tmp_path: Path) -> None:
    """The series files are named by their time_nanos: a range selects exactly the files inside it."""
    assert len(SERIES) >= 6, "expected the series/ time series in the corpus"
    client = app.test_client()
    _ingest(client, SERIES)
    _check(client, SERIES, tmp_path, EVERYTHING)
    t = [int(p.name.split(".")[0]) for p in SERIES]
    seconds = [f"{ns // 10**9}.{ns % 10**9:09d}" for ns in t]
    partial = {"from": seconds[2], "to": seconds[5]}  # half-open: files 2, 3, 4
    _check(client, SERIES[2:5], tmp_path, partial)


def _top_values(paths: Sequence[Path], sample_type: str) -> dict[str, tuple[int, int]]:
    """`go tool pprof -top` per function name as integers: (flat, cum), bytes shown in B."""
    out = _go("-top", "-nodefraction=0", "-nodecount=1000000", "-unit=B", f"-sample_index={sample_type}", *paths)
    rows: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[1].endswith("%") and parts[4].endswith("%"):
            name = re.sub(r"^function#\d+", "<unknown>", parts[5]).removesuffix(" (inline)")
            flat, cum = (int(re.sub(r"[^\d-]", "", v) or 0) for v in (parts[0], parts[3]))
            old = rows.get(name, (0, 0))
            rows[name] = (old[0] + flat, max(old[1], cum))
    return rows


def test_diff_of_two_ranges_equals_go_tool_pprof_per_function(app: Flask) -> None:
    client = app.test_client()
    _ingest(client, SERIES)
    t = [int(p.name.split(".")[0]) for p in SERIES]
    sec = [f"{ns // 10**9}.{ns % 10**9:09d}" for ns in t]
    base, comp = SERIES[0:3], SERIES[5:9]
    params = {"base_from": sec[0], "base_to": sec[3], "from": sec[5], "to": sec[9], "limit": "100000"}
    types = {t["type"] for t in client.get("/api/v1/types", query_string=EVERYTHING).json["types"]}
    assert types
    for sample_type in sorted(types):
        r = client.get("/api/v1/diff", query_string={**params, "type": sample_type}).json
        want_base, want_comp = raw_totals(base)[sample_type], raw_totals(comp)[sample_type]
        assert (r["base_total"], r["comp_total"]) == (want_base, want_comp), sample_type
        ours = {re.sub(r"^function#\d+", "<unknown>", row["name"]): row for row in r["functions"]}
        pb, pc = _top_values(base, sample_type), _top_values(comp, sample_type)
        assert set(ours) == {n for n in set(pb) | set(pc) if pb.get(n, (0, 0)) != (0, 0) or pc.get(n, (0, 0)) != (0, 0)}
        for name, row in ours.items():
            b, c = pb.get(name, (0, 0)), pc.get(name, (0, 0))
            assert row["comp_flat"] - row["base_flat"] == c[0] - b[0], (sample_type, name)
            assert (row["base_flat"], row["comp_flat"]) == (b[0], c[0]), (sample_type, name)
            assert (row["base_cum"], row["comp_cum"]) == (b[1], c[1]), (sample_type, name)


_PERIOD_TYPE = re.compile(r"^PeriodType: (\S+) (\S+)$", re.MULTILINE)


def test_downloads_of_non_cpu_types_do_not_claim_a_cpu_period(app: Flask, tmp_path: Path) -> None:
    """A heap profile's pprof download said `PeriodType: cpu nanoseconds` (period 524288: "0.5 ms of CPU")."""
    client = app.test_client()
    _ingest(client, [PPROF_DIR / "parca-testdata-alloc_objects.pb.gz", PPROF_DIR / "pprof-sample.cpu.pb.gz"])
    for sample_type, unit in [("alloc_space", "bytes"), ("inuse_objects", "count"), ("samples", "count")]:
        download = tmp_path / f"{sample_type}.pb.gz"
        download.write_bytes(client.get("/api/v1/pprof", query_string={**EVERYTHING, "type": sample_type}).data)
        period = _PERIOD_TYPE.search(_go("-raw", download))
        assert period, sample_type
        want = ("cpu", "nanoseconds") if sample_type == "samples" else (sample_type, unit)
        assert period.groups() == want


_GO_RUNTIME_PROGRAM = """
package main

import (
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"
)

var sink [][]byte

func main() {
	runtime.SetMutexProfileFraction(1)
	runtime.SetBlockProfileRate(1)
	runtime.MemProfileRate = 512
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 300; j++ {
				mu.Lock()
				sink = append(sink, make([]byte, 1024))
				time.Sleep(10 * time.Microsecond)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, name := range os.Args[2:] {
		f, _ := os.Create(os.Args[1] + "/" + name + ".pb.gz")
		if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
			panic(err)
		}
		f.Close()
	}
}
"""
GO_RUNTIME_TYPES = ["goroutine", "mutex", "block", "heap", "allocs", "threadcreate"]


@pytest.fixture(scope="module")
def go_runtime_profiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What Go's net/http/pprof serves, written by the Go runtime itself from a program built here."""
    if not shutil.which("go"):
        pytest.fail("go (Debian golang-go, installed by scripts/setup.sh) builds this test's program")
    src = tmp_path_factory.mktemp("goprog")
    (src / "main.go").write_text(_GO_RUNTIME_PROGRAM)
    (src / "go.mod").write_text("module goprog\n\ngo 1.19\n")
    env = {**os.environ, "GOCACHE": str(src / "gocache")}  # `make unit` runs as nobody, whose HOME does not exist
    subprocess.run(["go", "build", "-o", "goprog", "."], cwd=src, env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([str(src / "goprog"), str(src), *GO_RUNTIME_TYPES], check=True, timeout=120)
    return {name: src / f"{name}.pb.gz" for name in GO_RUNTIME_TYPES}


@pytest.mark.parametrize("name", GO_RUNTIME_TYPES)
def test_go_runtime_profile_types(app: Flask, name: str, go_runtime_profiles: dict[str, Path],
                                  tmp_path: Path) -> None:
    """Goroutine, mutex, block, heap, allocs and threadcreate profiles pushed as a Go service would push
    them: every type's total, and every function's flat/cum in the download, agree with go tool pprof."""
    path = go_runtime_profiles[name]
    client = app.test_client()
    r = client.post("/api/v1/ingest", data=path.read_bytes(), query_string={"service": "goprog", "profile": name})
    assert r.status_code == 200, r.json
    params = {**EVERYTHING, "query": f'{{profile="{name}"}}'}
    if name != "threadcreate":
        _check(client, [path], tmp_path, params)
        return
    # Go records no stacks for thread creation: one stackless sample, which -raw leaves out and -top counts
    q = {**params, "type": "threadcreate"}
    want_total, _ = top_table([path], "threadcreate")
    assert client.get("/api/v1/flamegraph", query_string=q).json["total"] == int(want_total) > 0
    download = tmp_path / "threadcreate.pb.gz"
    download.write_bytes(client.get("/api/v1/pprof", query_string=q).data)
    assert top_table([download], "threadcreate")[0] == want_total
