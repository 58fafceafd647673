"""The `podflame` command: `up`, `server`, `agent`, `record`.

Heavy imports (bcc, flask) happen inside commands so that `podflame --help` is instant and
the server runs on machines without BPF.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import click


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise click.ClickException(
            f"{what} needs root: it loads an eBPF program on a perf event on every CPU (CAP_BPF, CAP_PERFMON) "
            "and reads other processes' /proc/PID/maps and binaries (CAP_SYS_PTRACE). Run it as root.")


def _setup_logging(verbose: bool) -> None:
    import logging  # here: `podflame symbolize` is a short process and logs nothing

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def _make_http_server(app, host: str, port: int):
    from werkzeug.serving import make_server

    try:
        return make_server(host, port, app, threaded=True)
    except OSError as e:
        hint = " (is another podflame running? pick another with --listen)" if e.errno == 98 else ""
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None


class AgentHealth:
    """The agent's /healthz: 200 while drains succeed, 503 while starting (compiling the sampler) or when
    no drain succeeded for `stale_after` seconds (3 intervals, at least 30 s) or the drain loop died.

    Uploads failing do not make the agent unhealthy: it keeps a backlog and retries, and restarting it
    would lose that backlog. The body says what was checked.
    """

    def __init__(self, interval: float, clock=time.monotonic) -> None:
        self.stale_after = max(3 * interval, 30.0)
        self.clock = clock
        self.agent = None
        self.thread: threading.Thread | None = None
        self.attached_at: float | None = None
        self.kube = None

    def attach(self, agent, thread: threading.Thread, kube=None) -> None:
        self.agent, self.thread, self.kube = agent, thread, kube
        self.attached_at = self.clock()

    def check(self) -> tuple[int, dict]:
        now = self.clock()
        body: dict = {"status": "starting", "last_drain_seconds_ago": None, "stale_after_seconds": self.stale_after}
        if self.kube is not None:
            body["pods_synced"] = self.kube.synced
        if self.agent is None or self.thread is None or self.attached_at is None:
            return 503, body  # the sampler is still compiling
        last = self.agent.last_drain_at
        if last is not None:
            body["last_drain_seconds_ago"] = round(now - last, 3)
        if not self.thread.is_alive():
            body["status"] = "stopped"
            return 503, body
        since = now - (last if last is not None else self.attached_at)
        if since > self.stale_after:
            body["status"] = "stale"
            return 503, body
        body["status"] = "ok"
        return 200, body


def _serve_agent_http(host: str, port: int, health: AgentHealth):
    """/metrics (Prometheus) and /healthz on the agent's --metrics address, in a daemon thread."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    import profiler.metrics  # noqa: F401  (the agent's metrics exist, at zero, from the first scrape)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # probes every few seconds: keep the log for real events
            pass

        def _send(self, code: int, ctype: str, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            elif path == "/healthz":
                code, body = health.check()
                self._send(code, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "application/json", b'{"error": "not found: /metrics and /healthz are served here"}')

        do_HEAD = do_GET

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise click.ClickException(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="podflame-metrics", daemon=True).start()
    return server


def _start_agent(server_url: str, frequency: int, interval: float, node: str | None, *,
                 namespaces: str | None = None, exclude_namespaces: str | None = None,
                 pod_selector: str | None = None, pod_labels: str | None = None,
                 pod_annotations: str | None = None, health: AgentHealth | None = None):
    from profiler.agent import Agent, KubeletLabels, create_context
    from profiler.kube import KubeMetadata
    from profiler.sampler import Sampler, SamplerError
    from profiler.selection import PodCgroupFilter, parse_selection
    from profiler.upload import Uploader
    from symbolizer import Symbolizer

    ctx = create_context(node)
    copy: dict[str, list[str]] = {}
    if pod_labels is not None:
        copy["label_allowlist"] = [k.strip() for k in pod_labels.split(",") if k.strip()]
    if pod_annotations is not None:
        copy["annotation_allowlist"] = [k.strip() for k in pod_annotations.split(",") if k.strip()]
    kube = KubeMetadata.from_environment(ctx.node, **copy)  # None (logged once) on a plain host
    try:
        selection = parse_selection(namespaces, exclude_namespaces, pod_selector,
                                    watch_namespace=kube.namespace if kube is not None else None)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if not selection.everything and kube is None:
        raise click.UsageError("choosing pods (--namespaces, --exclude-namespaces, --pod-selector) needs the "
                               "Kubernetes API: run in a cluster or set KUBECONFIG")
    if kube is not None:
        kube.start()
    click.echo(f"podflame agent: compiling the eBPF sampler ({frequency} Hz on {os.cpu_count()} CPUs)...", err=True)
    try:
        # with a selection, nothing is sampled until the selected pods' cgroups are known
        sampler = Sampler(frequency, cgroup_ids=None if selection.everything else PodCgroupFilter.initial_ids())
    except SamplerError as e:
        raise click.ClickException(str(e)) from None
    pod_filter = None
    if not selection.everything:
        pod_filter = PodCgroupFilter(sampler, kube, selection, ctx.cgroups)
        pod_filter.start()
    symbolizer = Symbolizer(ctx.maps)
    uploader = Uploader(server_url, node=ctx.node)
    agent = Agent(sampler, ctx, symbolizer, uploader, pod_labels=KubeletLabels(kube), interval=interval)
    thread = threading.Thread(target=agent.run, name="podflame-agent", daemon=True)
    thread.start()
    if health is not None:
        health.attach(agent, thread, kube)
    what = "every process" if selection.everything else f"only pods with {_describe(selection)}"
    click.echo(f"podflame agent: sampling {what} on node {ctx.node!r}, shipping every {interval:g}s to {server_url}",
               err=True)

    def stop() -> None:
        agent.stop()
        thread.join(timeout=interval + 30)
        uploader.close()
        if pod_filter is not None:
            pod_filter.stop()
        sampler.close()
        if kube is not None:
            kube.stop()

    return stop


def _describe(selection) -> str:
    parts = []
    if selection.namespaces:
        parts.append("namespace in " + ",".join(sorted(selection.namespaces)))
    if selection.exclude_namespaces:
        parts.append("namespace not in " + ",".join(sorted(selection.exclude_namespaces)))
    parts.extend(f"{k}={v}" for k, v in sorted(selection.labels.items()))
    return " and ".join(parts)


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1):
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """podflame: continuous eBPF CPU profiling, per pod."""
    _setup_logging(verbose)


@main.command()
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="HOST:PORT of the UI and API.")
@click.option("--data", "data_dir", default="./podflame-data", show_default=True, type=click.Path(file_okay=False),
              help="Where profiles are stored (SQLite index + zstd files).")
@click.option("--frequency", default=19, show_default=True, type=click.IntRange(1, 10000), help="Samples/s per CPU.")
@click.option("--interval", default=10.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds between drains.")
@click.option("--node-name", default=None, help="Node label (default: $NODE_NAME or the host name).")
def up(listen: str, data_dir: str, frequency: int, interval: float, node_name: str | None) -> None:
    """Agent + server on this host, with the embedded store."""
    _require_root("podflame up")
    from web.app import create_app

    host, port = _parse_listen(listen)
    app = create_app({"DATA_DIR": str(Path(data_dir).resolve())})
    server = _make_http_server(app, host, port)
    threading.Thread(target=server.serve_forever, name="podflame-http", daemon=True).start()
    url = f"http://{host if ':' not in host else f'[{host}]'}:{server.server_port}"
    stop_agent = _start_agent(url, frequency, interval, node_name)
    click.echo(f"podflame is up: open {url}/  (data in {Path(data_dir).resolve()}; Ctrl-C to stop)")
    _wait_for_signal()
    click.echo("podflame: stopping (final drain)...", err=True)
    stop_agent()
    server.shutdown()


@main.command()
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="HOST:PORT of the UI and API.")
@click.option("--data", "data_dir", default="./podflame-data", show_default=True, type=click.Path(file_okay=False))
def server(listen: str, data_dir: str) -> None:
    """The server alone: ingest, store, query, UI."""
    from web.app import create_app

    host, port = _parse_listen(listen)
    app = create_app({"DATA_DIR": str(Path(data_dir).resolve())})
    srv = _make_http_server(app, host, port)
    click.echo(f"podflame server: listening on http://{host}:{srv.server_port}/ (data in {Path(data_dir).resolve()})")
    threading.Thread(target=srv.serve_forever, name="podflame-http", daemon=True).start()
    _wait_for_signal()
    srv.shutdown()


@main.command()
@click.option("--server", "server_url", required=True, help="URL of the podflame server, e.g. http://podflame:7070")
@click.option("--frequency", default=19, show_default=True, type=click.IntRange(1, 10000))
@click.option("--interval", default=10.0, show_default=True, type=click.FloatRange(0.5, 3600))
@click.option("--node-name", default=None, help="Node label (default: $NODE_NAME or the host name).")
@click.option("--unwind", type=click.Choice(["auto", "fp", "tables"]), default="auto", show_default=True,
              envvar="PODFLAME_UNWIND", help="User stacks: .eh_frame tables where loaded, else frame pointers.")
@click.option("--metrics", "metrics_listen", default=None,
              help="HOST:PORT to serve the agent's /metrics and /healthz on.")
@click.option("--namespaces", envvar="PODFLAME_NAMESPACES", default=None,
              help="Sample only pods of these namespaces (comma-separated; $PODFLAME_NAMESPACES). "
                   "Applied in the kernel; with any pod option, processes outside pods are not sampled.")
@click.option("--exclude-namespaces", envvar="PODFLAME_EXCLUDE_NAMESPACES", default=None,
              help="Do not sample pods of these namespaces (comma-separated; $PODFLAME_EXCLUDE_NAMESPACES).")
@click.option("--pod-selector", envvar="PODFLAME_POD_SELECTOR", default=None,
              help="Sample only pods with these labels: KEY=VALUE[,KEY=VALUE] ($PODFLAME_POD_SELECTOR).")
@click.option("--pod-labels", envvar="PODFLAME_POD_LABELS", default=None,
              help="Pod label keys copied onto profiles, e.g. app.kubernetes.io/name,team ($PODFLAME_POD_LABELS).")
@click.option("--pod-annotations", envvar="PODFLAME_POD_ANNOTATIONS", default=None,
              help="Pod annotation keys copied onto profiles (comma-separated; $PODFLAME_POD_ANNOTATIONS).")
def agent(server_url: str, frequency: int, interval: float, node_name: str | None, unwind: str,
          metrics_listen: str | None,
          namespaces: str | None, exclude_namespaces: str | None, pod_selector: str | None,
          pod_labels: str | None, pod_annotations: str | None) -> None:
    """The node agent alone, shipping to a server."""
    _require_root("podflame agent")
    os.environ["PODFLAME_UNWIND"] = unwind  # read by profiler.sampler.Sampler
    health = AgentHealth(interval)
    if metrics_listen:  # served from the start: probes see 503 "starting" while the sampler compiles
        host, port = _parse_listen(metrics_listen)
        _serve_agent_http(host, port, health)
    stop_agent = _start_agent(server_url, frequency, interval, node_name, namespaces=namespaces,
                              exclude_namespaces=exclude_namespaces, pod_selector=pod_selector,
                              pod_labels=pod_labels, pod_annotations=pod_annotations, health=health)
    _wait_for_signal()
    stop_agent()


@main.command()
@click.option("--duration", required=True, type=click.FloatRange(0.1, 86400), help="Seconds to sample.")
@click.option("--pid", type=int, default=None, help="Only this process.")
@click.option("--cgroup", "cgroup_path", default=None,
              help="Only this cgroup v2 (path under the v2 root, or a full /sys/fs/cgroup path).")
@click.option("--frequency", default=99, show_default=True, type=click.IntRange(1, 10000))
@click.option("--format", "fmt", type=click.Choice(["folded", "pprof"]), default="folded", show_default=True)
@click.option("--unwind", type=click.Choice(["auto", "fp", "tables"]), default="auto", show_default=True,
              envvar="PODFLAME_UNWIND", help="User stacks: .eh_frame tables where loaded, else frame pointers.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write ('-' for stdout).")
def record(duration: float, pid: int | None, cgroup_path: str | None, frequency: int, fmt: str, unwind: str,
           output: str) -> None:
    """One-shot capture, symbolized, to a folded or pprof file (like BCC's profile, with our symbols)."""
    _require_root("podflame record")
    if pid is not None and cgroup_path is not None:
        raise click.UsageError("give --pid or --cgroup, not both")
    from podflame import pprof
    from podflame.model import Profile
    from profiler.agent import KubeletLabels, PodLabels, build_profiles, create_context
    from profiler.cgroups import CgroupResolver
    from profiler.sampler import Sampler, SamplerError
    from symbolizer import Symbolizer
    from web.export import to_folded

    cgroup_ids = None
    if cgroup_path is not None:
        cgroup_id = CgroupResolver().id_of(cgroup_path)
        if cgroup_id is None:
            raise click.ClickException(f"no cgroup v2 directory {cgroup_path!r}")
        cgroup_ids = [cgroup_id]
    if pid is not None and not Path(f"/proc/{pid}").exists():
        raise click.ClickException(f"no process with pid {pid}")
    ctx = create_context(None)
    try:
        sampler = Sampler(frequency, pids=[pid] if pid is not None else None, cgroup_ids=cgroup_ids, unwind=unwind)
    except SamplerError as e:
        raise click.ClickException(str(e)) from None
    symbolizer = Symbolizer(ctx.maps)
    period_ns = int(1e9 / frequency)
    profiles: list[Profile] = []
    end = time.monotonic() + duration
    try:
        with sampler:
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(1.0, left))  # drain every second: maps of short-lived processes stay fresh
                profiles.extend(build_profiles(sampler.drain(), ctx, period_ns))
                click.echo(f"\rrecording: {max(0.0, end - time.monotonic()):5.1f}s left, "
                           f"{sum(p.total() for p in profiles)} samples", nl=False, err=True)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: writing what was captured", err=True)
    click.echo("", err=True)
    by_labels: dict[tuple, list[Profile]] = {}
    for p in profiles:
        by_labels.setdefault(tuple(sorted(p.labels.items())), []).append(p)
    pods = PodLabels(KubeletLabels(), hold_seconds=0)
    groups = [Profile.merge(group) for group in by_labels.values()]
    symbolized = [symbolizer.symbolize(p) for p in groups]
    fetcher = symbolizer.debuginfod  # a one-shot capture can wait for the debug files it asked for
    if fetcher is not None:
        if not fetcher.wait(0):
            click.echo(f"waiting up to {fetcher.max_time:.0f}s for debug files from debuginfod...", err=True)
            fetcher.wait(fetcher.max_time)
        symbolized = [symbolizer.symbolize(p) for p in groups]  # redoes only binaries whose file arrived
    merged = pods(symbolized)
    data = pprof.encode(merged) if fmt == "pprof" else to_folded(Profile.merge(merged, labels={})).encode()
    out = sys.stdout.buffer if output == "-" else open(output, "wb")  # noqa: SIM115
    with out:
        out.write(data)
    total = sum(p.total() for p in merged)
    click.echo(f"wrote {total} samples from {len(merged)} processes to {output} ({fmt})", err=True)



@main.command()
@click.option("--binary", "binary", required=True, type=click.Path(exists=True, dir_okay=False),
              help="ELF file (executable, shared library or debug file).")
@click.option("--inlines", is_flag=True, help="Print inlined frames too (as addr2line -i), innermost first.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Persist decoded DWARF indexes here, per build id (as the agent does).")
@click.argument("addresses", nargs=-1)
def symbolize(binary: str, inlines: bool, cache_dir: str | None, addresses: tuple[str, ...]) -> None:
    """Print function and file:line for ELF virtual ADDRESSES (hex) of BINARY, or for addresses read
    from stdin when none are given: one block per address, one `function<TAB>file:line` per frame."""
    from symbolizer.elf import ElfReadError
    from symbolizer.tool import BinaryTool, parse_address

    tokens = addresses or sys.stdin.read().split()
    try:
        vaddrs = [parse_address(t) for t in tokens]
    except ValueError as e:
        raise click.BadParameter(f"addresses are hex ELF virtual addresses: {e}") from None
    try:
        tool = BinaryTool(binary, cache_dir=cache_dir)
        sys.stdout.write("\n\n".join(tool.blocks(vaddrs, inlines=inlines)) + "\n" if vaddrs else "")
    except ElfReadError as e:
        raise click.ClickException(str(e)) from None
