"""Agent metrics (Prometheus): what was captured, what was lost and why, what it cost."""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from podflame.model import Profile
from profiler.sampler import MAX_STACK_DEPTH, PY_ERRORS, PY_NOT_PYTHON

if TYPE_CHECKING:
    from profiler.sampler import Drain

SAMPLES = Counter("podflame_agent_samples_total", "CPU samples drained from the kernel")
DRAINS = Counter("podflame_agent_drains_total", "Drains of the kernel maps")
SAMPLER_ERRORS = Counter("podflame_agent_sampler_errors_total",
                         "Samples whose stack or count the kernel could not record, by cause", ["cause"])
FRAMES = Counter("podflame_agent_frames_total", "Distinct frames per drained profile, by resolution",
                 ["resolution"])
RESOLVED_SHARE = Gauge("podflame_agent_resolved_frame_ratio", "Share of frames with a function name, last drain")
DRAIN_CPU = Histogram("podflame_agent_drain_cpu_seconds", "CPU time of one drain, symbolization included",
                      buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
UPLOADS = Counter("podflame_agent_uploads_total", "Batches shipped to the server, by outcome", ["outcome"])
BACKLOG = Gauge("podflame_agent_upload_backlog_batches", "Batches waiting to be shipped")
HELD_PROFILES = Gauge("podflame_agent_held_profiles", "Profiles waiting for their pod's metadata")
PYTHON_PROCESSES = Counter("podflame_agent_python_processes_total", "CPython processes registered for Python frames")
PYTHON_UNSUPPORTED = Counter("podflame_agent_python_unsupported_total",
                             "Processes with an interpreter podflame cannot read (version, build), skipped")
PYTHON_CODE_READ_FAILURES = Counter("podflame_agent_python_code_read_failures_total",
                                    "Code objects that could not be read or validated (freed, reused, gone)")
PYTHON_SAMPLES = Counter("podflame_agent_python_samples_total",
                         "Samples of registered CPython processes, by outcome of the Python walk", ["outcome"])
TRUNCATED_STACKS = Counter("podflame_agent_truncated_stacks_total",
                           "Samples whose stack was deeper than the kernel keeps; the cut is marked in the stack "
                           "(python: frames left out, native: a user stack at the depth limit)", ["stack"])
DROPPED_BATCHES = Counter("podflame_agent_dropped_batches_total", "Batches dropped because the backlog was full")
UNWIND_SAMPLES = Counter("podflame_agent_unwind_samples_total",
                         "Samples whose user stack was walked with .eh_frame tables or frame pointers", ["method"])
UNWIND_STOPS = Counter("podflame_agent_unwind_stops_total",
                       "How table walks ended: end = the process entry (_start, thread start) reached", ["reason"])
UNWIND_ENTRY_SHARE = Gauge("podflame_agent_unwind_entry_ratio",
                           "Share of table-walked samples that reached the process entry, last drain")
UNWIND_TABLES = Gauge("podflame_agent_unwind_tables", "Unwind tables in BPF maps", ["what"])
UNWIND_LIBRARY_LOOKUPS = Counter("podflame_agent_unwind_library_lookups_total",
                                 "Samples walked with the executable's table before the process's mappings were "
                                 "loaded, by what the lookup of their first library (bpf_find_vma) gave: table = "
                                 "walked with its table, busy = no VMA (the mmap lock was taken), no_table = not "
                                 "loaded; remembered = library changes served from the process's own mmaps "
                                 "(unwind_exe_libs), without a lookup",
                                 ["outcome"])
COMPILED_MODULES = Gauge("podflame_agent_compiled_modules",
                         "Hot modules running compiled by mypyc (0: the pure-Python source; the start log says why)")

log = logging.getLogger("podflame.agent")
UNWIND_LOG_EVERY_S = 60.0
_STOPS = ("end", "truncated", "read_fault", "no_mapping", "unsupported", "zero_ra", "bad_cfa", "tail_fail",
          "guess_outside")
_GAUGES = ("binaries", "binaries_in_use", "rows", "row_budget", "row_bytes", "map_bytes", "processes",
           "rejected_binaries", "rejected_rows", "rejected_processes", "exe_files")
_PY_TRUNCATED = PY_ERRORS.index("truncated")
_unwind_last: dict[str, int] = {}
_unwind_logged: dict[str, float | dict[str, int]] = {}


def record_unwind(report: dict[str, int], *, now: float | None = None) -> None:
    """Native unwinding counters and table memory from one drain (`Drain.unwind`, cumulative), and
    once a minute a log line with the shares since the previous one."""
    if not report:
        return
    delta = {k: v - _unwind_last.get(k, 0) for k, v in report.items() if k.startswith("walk_")}
    _unwind_last.update(report)
    UNWIND_SAMPLES.labels("tables").inc(max(0, delta.get("walk_tables", 0)))
    UNWIND_SAMPLES.labels("frame_pointers").inc(max(0, delta.get("walk_fp", 0)))
    # of the "tables" ones: walked with the executable's table before the process's own mappings were loaded
    UNWIND_SAMPLES.labels("executable_table").inc(max(0, delta.get("walk_exe", 0)))
    for outcome, slot in (("table", "walk_vma"), ("busy", "walk_vma_fail"), ("no_table", "walk_vma_no_table"),
                         ("remembered", "walk_lib_known")):
        UNWIND_LIBRARY_LOOKUPS.labels(outcome).inc(max(0, delta.get(slot, 0)))
    for reason in _STOPS:
        UNWIND_STOPS.labels(reason).inc(max(0, delta.get(f"walk_{reason}", 0)))
    if delta.get("walk_tables", 0) > 0:
        UNWIND_ENTRY_SHARE.set(delta.get("walk_end", 0) / delta["walk_tables"])
    for what in _GAUGES:
        UNWIND_TABLES.labels(what).set(report.get(f"table_{what}", 0))
    now = time.monotonic() if now is None else now
    last_at = _unwind_logged.get("at")
    if isinstance(last_at, float) and now - last_at < UNWIND_LOG_EVERY_S:
        return
    before = _unwind_logged.get("counts")
    base = before if isinstance(before, dict) else {}
    d = {k: report.get(k, 0) - base.get(k, 0) for k in ("walk_tables", "walk_fp", "walk_end", "walk_truncated")}
    _unwind_logged.update(at=now, counts={k: v for k, v in report.items() if k.startswith("walk_")})
    walked = d["walk_tables"]
    log.info("native unwinding: %d samples walked with tables (%.1f%% reached the process entry, %.1f%% cut at "
             "the depth limit), %d with frame pointers only; tables: %d binaries, %d rows (%.1f MiB of a "
             "%.1f MiB budget), %d processes, %d binaries did not fit",
             walked, 100 * d["walk_end"] / walked if walked else 0.0,
             100 * d["walk_truncated"] / walked if walked else 0.0, d["walk_fp"], report.get("table_binaries", 0),
             report.get("table_rows", 0), report.get("table_row_bytes", 0) / 2**20,
             report.get("table_map_bytes", 0) / 2**20, report.get("table_processes", 0),
             report.get("table_rejected_binaries", 0))


def record_drain(drain: Drain, profiles: list[Profile], last_errors: dict[str, int]) -> None:
    record_unwind(drain.unwind)
    DRAINS.inc()
    SAMPLES.inc(sum(s.count for s in drain.samples))
    python: collections.Counter = collections.Counter()
    cut_python = cut_native = 0
    for s in drain.samples:
        if s.python_error != PY_NOT_PYTHON:  # only processes registered as CPython
            python["frames" if s.python_stack else PY_ERRORS[s.python_error]
                   if 0 <= s.python_error < len(PY_ERRORS) else "other"] += s.count
            if s.python_error == _PY_TRUNCATED and s.python_stack:
                cut_python += s.count
        if len(s.user_stack) >= MAX_STACK_DEPTH:
            cut_native += s.count
    for outcome, n in python.items():
        PYTHON_SAMPLES.labels(outcome).inc(n)
    TRUNCATED_STACKS.labels("python").inc(cut_python)
    TRUNCATED_STACKS.labels("native").inc(cut_native)
    for cause, value in drain.errors.items():  # the sampler reports cumulative counters
        delta = value - last_errors.get(cause, 0)
        if delta > 0:
            SAMPLER_ERRORS.labels(cause).inc(delta)
    resolved = 0
    unresolved: collections.Counter = collections.Counter()  # by reason; most frames resolve: count those plainly
    for p in profiles:
        for stack in p.samples:
            for frame in stack:
                if frame.lines:
                    resolved += 1
                else:
                    unresolved[frame.reason] += 1
    outcomes = {"resolved": resolved, **{str(r or "unsymbolized"): n for r, n in unresolved.items()}}
    for outcome, n in outcomes.items():
        FRAMES.labels(outcome).inc(n)
    if total := sum(outcomes.values()):
        RESOLVED_SHARE.set(outcomes["resolved"] / total)
