"""Our agent vs BCC's profile-bpfcc, side by side on the same busy host for the same time.

Both sample at the same frequency while `--busy` single-threaded burners keep CPUs busy. For each
tool it prints CPU seconds (total, start-up, and steady state as a share of one core), peak RSS, and
captured samples of the burners against frequency x their own CPU seconds. The last line is JSON.

It runs twice by default, each time beside a new profile-bpfcc: first as the agent's first start on a
node (empty caches: BCC compiles the sampler, every binary's symbols are decoded), then as a restart
with the caches that run filled (the compiled program and the symbol cache, both kept on a hostPath by
the DaemonSet). `--runs 1` runs the first start only.

    .venv/bin/python bench/agent_overhead.py --duration 60 --frequency 99
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.realsys import build_c  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for(url: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--frequency", type=int, default=99)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy single-threaded burners")
    ap.add_argument("--startup", type=float, default=15.0,
                    help="seconds counted as start-up: compile, load, and the first (cold) drain at 10 s")
    ap.add_argument("--runs", type=int, choices=(1, 2), default=2, help="1: first start only; 2: and a restart")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: both tools load eBPF programs")
    caches = Path(tempfile.mkdtemp(prefix="podflame-bench-caches-"))
    env = {**os.environ, "PODFLAME_BPF_CACHE": str(caches / "bpf"), "PODFLAME_SYMBOL_CACHE": str(caches / "symbols")}
    results = {}
    for name in ("first_start", "restart")[: args.runs]:
        print(f"== {name.replace('_', ' ')}", file=sys.stderr)
        results[name] = run(args, env)
    print(json.dumps(results))


def run(args: argparse.Namespace, env: dict[str, str]) -> dict:
    podflame = ROOT / ".venv" / "bin" / "podflame"
    tmp = Path(tempfile.mkdtemp(prefix="podflame-bench-"))
    built = build_c("two_hot.c", tmp, "-O0")
    burn = tmp / f"pfb{os.getpid()}"  # a comm no other process on the host has
    built.rename(burn)
    port = 17000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "log.txt", "w")  # noqa: SIM115
    server = subprocess.Popen([str(podflame), "server", "--listen", f"127.0.0.1:{port}", "--data", str(tmp / "data")],
                              stdout=log, stderr=log)
    wait_for(url + "/healthz")
    # Both tools start first; the burners run only once both sample, and stop before either stops,
    # so each tool saw the burners' whole life and expected = their CPU seconds x frequency.
    ours = subprocess.Popen([str(podflame), "agent", "--server", url, "--frequency", str(args.frequency),
                             "--interval", "10", "--node-name", "bench"], stdout=log, stderr=log, env=env)
    folded = open(tmp / "bcc.folded", "w")  # noqa: SIM115
    bcc_seconds = int(args.startup + args.duration + 10)
    theirs = subprocess.Popen(["profile-bpfcc", "-F", str(args.frequency), "-af", str(bcc_seconds)],
                              stdout=folded, stderr=log)
    print(f"start-up {args.startup:.0f}s, then {args.busy} burners for {args.duration:.0f}s at {args.frequency} Hz",
          file=sys.stderr)
    time.sleep(args.startup)
    start_cpu = {"podflame": cpu_seconds(ours.pid), "profile-bpfcc": cpu_seconds(theirs.pid)}
    t_steady = time.monotonic()
    burners = [subprocess.Popen([str(burn), str(args.duration)]) for _ in range(args.busy)]
    burn_cpu = 0.0
    for b in burners:
        _, _, usage = os.wait4(b.pid, 0)
        burn_cpu += usage.ru_utime + usage.ru_stime
    end_cpu = {"podflame": cpu_seconds(ours.pid), "profile-bpfcc": cpu_seconds(theirs.pid)}
    rss = {"podflame": peak_rss_mb(ours.pid), "profile-bpfcc": peak_rss_mb(theirs.pid)}
    steady_wall = time.monotonic() - t_steady
    time.sleep(1)
    ours.send_signal(2)  # the agent drains once more and flushes on SIGINT
    final_cpu = {}
    for name, proc in (("podflame", ours), ("profile-bpfcc", theirs)):
        _, _, usage = os.wait4(proc.pid, 0)  # includes profile-bpfcc's symbolization at exit
        final_cpu[name] = usage.ru_utime + usage.ru_stime
    expected = burn_cpu * args.frequency

    q = urllib.parse.urlencode({"query": f'{{comm="{burn.name}"}}', "from": "now-1h", "to": "now+1m", "by": "comm"})
    series = json.loads(urllib.request.urlopen(f"{url}/api/v1/series?{q}").read())
    our_samples = sum(s["value"] for s in series["series"])
    their_samples = 0
    for line in (tmp / "bcc.folded").read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack.split(";", 1)[0] == burn.name and count.isdigit():
            their_samples += int(count)
    server.send_signal(2)
    server.wait(30)

    result = {"duration_s": args.duration, "frequency_hz": args.frequency, "busy_cpus": args.busy,
              "expected_samples": round(expected)}
    for name, samples in (("podflame", our_samples), ("profile-bpfcc", their_samples)):
        total = final_cpu[name]
        steady = end_cpu[name] - start_cpu[name]
        result[name] = {"cpu_s_total": round(total, 2), "cpu_s_startup": round(start_cpu[name], 2),
                        "steady_core_pct": round(100 * steady / steady_wall, 3), "peak_rss_mb": round(rss[name], 1),
                        "samples": samples, "capture_ratio": round(samples / expected, 4) if expected else None}
    # profile-bpfcc does nothing between start-up and exit (it symbolizes once, at the end), so its
    # steady share is ~0 and a steady ratio means nothing; the whole-run ratio is the comparison.
    ours_r, theirs_r = result["podflame"], result["profile-bpfcc"]
    result["cpu_ratio_total"] = round(ours_r["cpu_s_total"] / theirs_r["cpu_s_total"], 3) \
        if theirs_r["cpu_s_total"] > 0 else None
    result["cpu_ratio_steady"] = round(ours_r["steady_core_pct"] / theirs_r["steady_core_pct"], 3) \
        if theirs_r["steady_core_pct"] >= 0.05 else None
    result["steady_target_met"] = ours_r["steady_core_pct"] < 1.0
    for name in ("podflame", "profile-bpfcc"):
        r = result[name]
        print(f"{name:14} cpu {r['cpu_s_total']:6.2f}s (start-up {r['cpu_s_startup']:.2f}s, steady "
              f"{r['steady_core_pct']:.3f}% of a core)  peak RSS {r['peak_rss_mb']:6.1f} MB  "
              f"samples {r['samples']}/{result['expected_samples']} ({100 * (r['capture_ratio'] or 0):.1f}%)",
              file=sys.stderr)
    print(f"whole-run CPU, ours / profile-bpfcc: {result['cpu_ratio_total']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
