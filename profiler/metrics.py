"""Agent metrics (Prometheus): what was captured, what was lost and why, what it cost."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from podflame.model import Profile
from profiler.sampler import PY_ERRORS, PY_NOT_PYTHON

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
DROPPED_BATCHES = Counter("podflame_agent_dropped_batches_total", "Batches dropped because the backlog was full")


def record_drain(drain: Drain, profiles: list[Profile], last_errors: dict[str, int]) -> None:
    DRAINS.inc()
    SAMPLES.inc(sum(s.count for s in drain.samples))
    python: collections.Counter = collections.Counter()
    for s in drain.samples:
        if getattr(s, "python_error", PY_NOT_PYTHON) != PY_NOT_PYTHON:  # only processes registered as CPython
            python["frames" if s.python_stack else PY_ERRORS[s.python_error]
                   if 0 <= s.python_error < len(PY_ERRORS) else "other"] += s.count
    for outcome, n in python.items():
        PYTHON_SAMPLES.labels(outcome).inc(n)
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
