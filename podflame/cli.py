"""The `podflame` command: `up`, `server`, `agent`, `record`, `symbolize`.

Thin: each command parses its options and hands off to the code that does the work (profiler.service,
profiler.record, profiler.health, web.server.app, symbolizer.tool). Errors are mapped to exit codes in
one place (`EXIT_CODES`, applied by `_Cli.invoke`). Heavy imports (bcc, flask) happen inside commands so
that `podflame --help` is instant and the server runs on machines without BPF.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from podflame.errors import InvalidInput, NotFound, PodflameError, SystemUnsupported

# The first match wins: usage-like errors as click's own (2), a host that cannot do it (3), the rest 1.
EXIT_CODES: tuple[tuple[type[PodflameError], int], ...] = ((InvalidInput, 2), (SystemUnsupported, 3),
                                                           (PodflameError, 1))


class _Cli(click.Group):
    """The group whose `invoke` turns a PodflameError into `Error: message` and its exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PodflameError as e:
            click.echo(f"Error: {e}", err=True)  # as click prints its own errors
            ctx.exit(next(code for kind, code in EXIT_CODES if isinstance(e, kind)))


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _server_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """`--server` as the uploader needs it: http(s)://HOST[:PORT], so a bare `host:7070` fails here, at start,
    not as an upload error at every drain."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as e:
        raise click.BadParameter(f"{value!r}: {e}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise click.BadParameter(f"expected http://HOST:PORT or https://HOST:PORT, got {value!r}")
    return value


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise SystemUnsupported(
            f"{what} needs root: it loads an eBPF program on a perf event on every CPU (CAP_BPF, CAP_PERFMON) "
            "and reads other processes' /proc/PID/maps and binaries (CAP_SYS_PTRACE). Run it as root.")


def _setup_logging(verbose: bool) -> None:
    import logging  # here: `podflame symbolize` is a short process and logs nothing

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def _say(text: str) -> None:
    click.echo(text, err=True)


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1):
        pass


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """podflame: continuous eBPF CPU profiling, per pod."""
    _setup_logging(verbose)


def _access_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Options shared by `up` and `server`: who may ingest and read, and from where."""
    for option in reversed([
        click.option("--ingest-token-file", type=click.Path(dir_okay=False), default=None,
                     help="File of tokens (one per line) that may ingest ($PODFLAME_INGEST_TOKEN_FILE); "
                          "re-read when it changes."),
        click.option("--read-token-file", type=click.Path(dir_okay=False), default=None,
                     help="File of tokens that may read: API, UI data, /metrics ($PODFLAME_READ_TOKEN_FILE)."),
        click.option("--allowed-hosts", default=None,
                     help="Extra Host names served, comma-separated ('*': any). On loopback only loopback names "
                          "are served by default (DNS rebinding)."),
        click.option("--allowed-origins", default=None,
                     help="Other browser origins that may POST, comma-separated (default: only the server's own)."),
        click.option("--metrics-public", is_flag=True, help="Serve /metrics without the read token."),
        click.option("--insecure", is_flag=True,
                     help="Allow listening beyond loopback without token files (a network policy must guard it)."),
    ]):
        fn = option(fn)
    return fn


class _Delays(click.ParamType):
    """`off` or seconds separated by commas, e.g. `0.1,0.3`: when to read a new Python process early."""

    name = "off|SECONDS,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        if text in ("", "off", "0", "no", "false"):
            return ()
        try:
            delays = tuple(float(part) for part in text.split(","))
        except ValueError:
            self.fail(f"{value!r} is not 'off' or seconds separated by commas (e.g. 0.1,0.3)", param, ctx)
        if len(delays) > 4 or any(not 0 < d <= 60 for d in delays):
            self.fail(f"{value!r}: give 1-4 delays, each in (0, 60] seconds", param, ctx)
        return delays


def _sampling_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Options shared by `up`, `agent` and `record`: how the sampler walks stacks. Handed to the Sampler
    as arguments; the environment variables are only these options' defaults."""
    for option in reversed([
        click.option("--unwind", type=click.Choice(["auto", "fp", "tables"]), default="auto", show_default=True,
                     envvar="PODFLAME_UNWIND",
                     help="User stacks: .eh_frame tables where a binary has them, else frame pointers (auto), "
                          "tables always (tables), or frame pointers only (fp) ($PODFLAME_UNWIND)."),
        click.option("--python-frames", type=click.BOOL, default="on", show_default=True, metavar="on|off",
                     envvar="PODFLAME_PYTHON_FRAMES",
                     help="Walk CPython processes' Python frames in the kernel and merge them into native "
                          "stacks (2.7 and 3.6-3.13; docs/python-frames.md) ($PODFLAME_PYTHON_FRAMES)."),
        click.option("--python-early-reads", type=_Delays(), default="off", show_default=True,
                     envvar="PODFLAME_PYTHON_EARLY_READS",
                     help="Also read a new Python process's code objects these many seconds after it is seen "
                          "(e.g. 0.1,0.3), so processes that exit before the next drain keep their Python "
                          "names; ~1 ms of CPU per Python process started (docs/python-frames.md) "
                          "($PODFLAME_PYTHON_EARLY_READS)."),
    ]):
        fn = option(fn)
    return fn


_pid_min_age_option = click.option(
    "--pid-min-age", type=click.FloatRange(0, 86400), default=60.0, show_default=True, metavar="SECONDS",
    envvar="PODFLAME_PID_MIN_AGE",
    help="Label a process by its pid once it has run this long; younger (short-lived) processes are summed "
         "per cgroup and comm, so they do not make a series each; 0 labels every process "
         "($PODFLAME_PID_MIN_AGE).")


@main.command()
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="HOST:PORT of the UI and API.")
@click.option("--data", "data_dir", default="./podflame-data", show_default=True, type=click.Path(file_okay=False),
              help="Where profiles are stored (SQLite index + zstd files).")
@click.option("--frequency", default=19, show_default=True, type=click.IntRange(1, 10000), help="Samples/s per CPU.")
@click.option("--interval", default=10.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds between drains.")
@click.option("--node-name", default=None, help="Node label (default: $NODE_NAME or the host name).")
@_sampling_options
@_pid_min_age_option
@_access_options
def up(listen: str, data_dir: str, frequency: int, interval: float, node_name: str | None, unwind: str,
       python_frames: bool, python_early_reads: tuple[float, ...], pid_min_age: float,
       ingest_token_file: str | None, read_token_file: str | None,
       allowed_hosts: str | None, allowed_origins: str | None, metrics_public: bool, insecure: bool) -> None:
    """Agent + server on this host, with the embedded store."""
    _require_root("podflame up")
    from profiler.service import start_agent
    from web.server.app import create_app, serve, serving_config

    host, port = _parse_listen(listen)
    config = serving_config(str(Path(data_dir).resolve()), host, ingest_token_file=ingest_token_file,
                            read_token_file=read_token_file, allowed_hosts=allowed_hosts,
                            allowed_origins=allowed_origins, metrics_public=metrics_public, insecure=insecure)
    server = serve(create_app(config), host, port)
    url = server.url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    try:
        stop_agent = start_agent(url, frequency, interval, node_name, unwind=unwind, python_frames=python_frames,
                                 python_early_reads=python_early_reads, pid_min_age_s=pid_min_age,
                                 token_file=config.get("INGEST_TOKEN_FILE"), say=_say)
    except BaseException:
        server.shutdown()  # no agent, no `up`: the port is let go before the error is reported
        raise
    click.echo(f"podflame is up: open {server.url}/  (data in {Path(data_dir).resolve()}; Ctrl-C to stop)")
    _wait_for_signal()
    click.echo("podflame: stopping (final drain)...", err=True)
    stop_agent()
    server.shutdown()


@main.command()
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="HOST:PORT of the UI and API.")
@click.option("--data", "data_dir", default="./podflame-data", show_default=True, type=click.Path(file_okay=False),
              help="Where the embedded store keeps profiles (SQLite index + zstd files).")
@_access_options
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM private key.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Request threads (a bounded pool, given only requests already read whole).")
@click.option("--timeout", default=30, show_default=True, type=click.IntRange(1, 3600),
              help="Seconds a connection may stay idle (or a TLS handshake take) before it is closed.")
@click.option("--request-deadline", default=60, show_default=True, type=click.IntRange(1, 3600),
              help="Seconds from a request's first byte to its last (headers and body), else 408 and closed: "
                   "a client trickling bytes is not idle.")
@click.option("--max-client-connections", default=128, show_default=True, type=click.IntRange(1, 512),
              help="Connections one client address may hold (of 512); behind a proxy, raise it.")
@click.option("--store", "store_dsn", default=None, envvar="PODFLAME_STORE",
              help="Another store: clickhouse://host:8123/db (see docs/scaling.md); default: SQLite in --data.")
@click.option("--print-ddl", is_flag=True, help="Print the ClickHouse DDL --store would apply, and exit.")
def server(listen: str, data_dir: str, ingest_token_file: str | None, read_token_file: str | None,
           allowed_hosts: str | None, allowed_origins: str | None, metrics_public: bool, insecure: bool,
           tls_cert: str | None, tls_key: str | None, threads: int, timeout: int, request_deadline: int,
           max_client_connections: int, store_dsn: str | None, print_ddl: bool) -> None:
    """The server alone: ingest, store, query, UI (waitress: whole requests to a bounded thread pool, optional TLS)."""
    from web.server.app import create_app, serve, serving_config
    from web.store.dsn import open_store, print_ddl_of

    if print_ddl:
        click.echo(print_ddl_of(store_dsn))
        return
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("give both --tls-cert and --tls-key, or neither")
    host, port = _parse_listen(listen)
    config = serving_config(str(Path(data_dir).resolve()), host, ingest_token_file=ingest_token_file,
                            read_token_file=read_token_file, allowed_hosts=allowed_hosts,
                            allowed_origins=allowed_origins, metrics_public=metrics_public, insecure=insecure)
    if store_dsn:  # chDB takes seconds to start, and a ClickHouse may be slow to answer: said first
        click.echo(f"podflame server: opening the store {_shown_dsn(store_dsn)}...", err=True)
        config["STORE"] = open_store(store_dsn, Path(data_dir).resolve())
    srv = serve(create_app(config), host, port, threads=threads, timeout=timeout,
                tls=(tls_cert, tls_key) if tls_cert and tls_key else None, request_deadline=request_deadline,
                per_client=max_client_connections)
    access = "tokens required" if config.get("READ_TOKEN_FILE") and config.get("INGEST_TOKEN_FILE") else (
        "NO ACCESS CONTROL" if not (config.get("READ_TOKEN_FILE") or config.get("INGEST_TOKEN_FILE")) else
        "tokens for " + ("ingest" if config.get("INGEST_TOKEN_FILE") else "reads") + " only")
    where = f"store {_shown_dsn(store_dsn)}" if store_dsn else f"data in {Path(data_dir).resolve()}"
    click.echo(f"podflame server: listening on {srv.url}/ ({threads} threads, {access}; {where})")
    _wait_for_signal()
    srv.shutdown()


def _shown_dsn(dsn: str) -> str:
    """The store's DSN as printed: without a password it may carry (`clickhouse://user:pass@host`)."""
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


@main.command()
@click.option("--server", "server_url", required=True, callback=_server_url,
              help="URL of the podflame server, e.g. http://podflame:7070")
@click.option("--frequency", default=19, show_default=True, type=click.IntRange(1, 10000), help="Samples/s per CPU.")
@click.option("--interval", default=10.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds between drains (one upload each).")
@click.option("--node-name", default=None, help="Node label (default: $NODE_NAME or the host name).")
@_sampling_options
@_pid_min_age_option
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
@click.option("--token-file", envvar="PODFLAME_TOKEN_FILE", type=click.Path(dir_okay=False), default=None,
              help="File holding the server's ingest token (first line; re-read per upload; $PODFLAME_TOKEN_FILE).")
@click.option("--ca", "ca_file", envvar="PODFLAME_CA", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM CA bundle that signs an https server's certificate (default: the system's CAs).")
def agent(server_url: str, frequency: int, interval: float, node_name: str | None, unwind: str,
          python_frames: bool, python_early_reads: tuple[float, ...], pid_min_age: float, metrics_listen: str | None,
          namespaces: str | None, exclude_namespaces: str | None, pod_selector: str | None,
          pod_labels: str | None, pod_annotations: str | None, token_file: str | None, ca_file: str | None) -> None:
    """The node agent alone, shipping to a server."""
    _require_root("podflame agent")
    from profiler.health import AgentHealth, serve_agent_http
    from profiler.service import start_agent

    health = AgentHealth(interval)
    if metrics_listen:  # served from the start: probes see 503 "starting" while the sampler compiles
        host, port = _parse_listen(metrics_listen)
        serve_agent_http(host, port, health)
    stop_agent = start_agent(server_url, frequency, interval, node_name, unwind=unwind,
                             python_frames=python_frames, python_early_reads=python_early_reads,
                             pid_min_age_s=pid_min_age, namespaces=namespaces,
                             exclude_namespaces=exclude_namespaces, pod_selector=pod_selector,
                             pod_labels=pod_labels, pod_annotations=pod_annotations, health=health,
                             token_file=token_file, ca_file=ca_file, say=_say)
    _wait_for_signal()
    stop_agent()


@main.command()
@click.option("--duration", required=True, type=click.FloatRange(0.1, 86400), help="Seconds to sample.")
@click.option("--pid", type=int, default=None, help="Only this process.")
@click.option("--cgroup", "cgroup_path", default=None,
              help="Only this cgroup v2 (path under the v2 root, or a full /sys/fs/cgroup path).")
@click.option("--frequency", default=99, show_default=True, type=click.IntRange(1, 10000), help="Samples/s per CPU.")
@click.option("--format", "fmt", type=click.Choice(["folded", "pprof"]), default="folded", show_default=True,
              help="folded: one `frame;frame count` line per stack (FlameGraph); pprof: gzip, for go tool pprof.")
@_sampling_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write ('-' for stdout).")
def record(duration: float, pid: int | None, cgroup_path: str | None, frequency: int, fmt: str, unwind: str,
           python_frames: bool, python_early_reads: tuple[float, ...], output: str) -> None:
    """One-shot capture, symbolized, to a folded or pprof file (like BCC's profile, with our symbols)."""
    _require_root("podflame record")
    if pid is not None and cgroup_path is not None:
        raise click.UsageError("give --pid or --cgroup, not both")
    from podflame import pprof
    from podflame.folded import to_folded
    from podflame.model import Profile
    from profiler.cgroups import CgroupResolver
    from profiler.record import record as capture

    cgroup_ids = None
    if cgroup_path is not None:
        cgroup_id = CgroupResolver().id_of(cgroup_path)
        if cgroup_id is None:
            raise NotFound(f"no cgroup v2 directory {cgroup_path!r}")
        cgroup_ids = [cgroup_id]
    if pid is not None and not Path(f"/proc/{pid}").exists():
        raise NotFound(f"no process with pid {pid}")

    created = output != "-" and not os.path.exists(output)
    try:  # before sampling: a path that cannot be written fails now, not after the capture it would lose;
        if output != "-":  # appending truncates nothing, so a failed capture leaves an earlier file as it was
            open(output, "ab").close()
    except OSError as e:
        raise click.BadParameter(f"cannot write {output}: {e.strerror or e}", param_hint="'-o' / '--output'") from None

    def progress(left: float, samples: int) -> None:
        click.echo(f"\rrecording: {left:5.1f}s left, {samples} samples", nl=False, err=True)

    import logging

    if logging.getLogger().level > logging.DEBUG:  # without -v: the progress line, not the agent's INFO log
        logging.getLogger().setLevel(logging.WARNING)
    # the sampler takes seconds to start (a BPF compile on a cache miss, tables of the process's binaries)
    _say(f"podflame record: starting the eBPF sampler ({frequency} Hz, "
         f"{f'pid {pid}' if pid is not None else f'cgroup {cgroup_path}' if cgroup_path else 'every process'})...")

    try:
        merged = capture(duration, frequency, unwind=unwind, python_frames=python_frames,
                         python_early_reads=python_early_reads,
                         pids=[pid] if pid is not None else None, cgroup_ids=cgroup_ids, progress=progress,
                         say=lambda text: _say("\n" + text))
    except BaseException:
        if created:
            os.unlink(output)
        raise
    click.echo("", err=True)
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
    from symbolizer.tool import BinaryTool, parse_address

    tokens = addresses or sys.stdin.read().split()
    vaddrs = []
    for token in tokens:
        try:
            vaddrs.append(parse_address(token))
        except ValueError:  # int()'s own text ("invalid literal for int() with base 16") says nothing to a user
            raise click.BadParameter(f"{token[:80]!r} is not a hex ELF virtual address (e.g. 0x401136 or 401136)",
                                     param_hint="ADDRESS") from None
    tool = BinaryTool(binary, cache_dir=cache_dir)
    sys.stdout.write("\n\n".join(tool.blocks(vaddrs, inlines=inlines)) + "\n" if vaddrs else "")
