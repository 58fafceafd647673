"""A binary whose .eh_frame is sparse for its rows gets its table: node.

The loader leaves a binary without a table when it would take over half of the row budget. It used to decide
by an estimate of a row per 4 bytes of .eh_frame, which errs high everywhere (4.2-7.5 bytes a row over 40 big
binaries of this host) and most for node 20 (7.45: 2.77 MB of .eh_frame, 372k rows, estimated 693k of the
1M-row budget's 524k). So node was never built: its frames were stepped with frame pointers, and in OpenSSL's
assembly (rbp holds the SHA-512 constants' address) that ends the walk at the leaf. Measured with `podflame
record --pid` on `crypto.pbkdf2Sync(.., 'sha512')` (3 s, 99 Hz, load 11-15): 63% of all samples were the single
frame `sha512_block_data_order_avx2`, 0% of the samples in it had a caller; perf --call-graph dwarf shows it
alone in 47-56% (its copy of the stack starts at rsp, and this code's CFA is read below rsp); gdb's backtrace from
the same instruction is SHA512_Update -> HMAC_Init_ex -> kdf_pbkdf2_derive. After: 100% of the samples in
the SHA-512 block function reach PKCS5_PBKDF2_HMAC, 96-100% from _start.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import reaches_entry, record, running, share

pytestmark = pytest.mark.bpf

NODE = shutil.which("node")  # Debian's nodejs: installed where the suite runs (tests/test_fidelity_containers_bpf.py)


def test_node_openssl_assembly_unwinds_with_nodes_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from profiler.unwind.cache import TableCache
    from profiler.unwind.loader import MAX_BUDGET_SHARE, ROWS_PER_CFI_BYTE_DIVISOR
    from symbolizer.elffile import ElfFile

    assert NODE is not None, "node is not installed"
    node = str(Path(NODE).resolve())
    with open(node, "rb") as f:
        elf = ElfFile(f)
        eh = elf.section(".eh_frame")
        assert eh is not None
        eh_bytes = eh.size
    # the table exists on disk (what an agent of the node built before): the record measures the walk, not the
    # ~1-2 s build under load; and it is of a size the budget takes, which the old estimate said it was not
    cache = TableCache(str(tmp_path))
    table = cache.get(node)
    budget = 1 << 20  # bpf/native_unwind.bpf.h UNWIND_ROWS
    assert table.count <= budget * MAX_BUDGET_SHARE < eh_bytes // ROWS_PER_CFI_BYTE_DIVISOR, (table.count, eh_bytes)
    monkeypatch.setenv("PODFLAME_SYMBOL_CACHE", str(tmp_path))
    with running([NODE, str(WORKLOADS / "node_pbkdf2.js"), "30"]) as pid:
        stacks = record(pid)
    in_sha = {s: n for s, n in stacks.items() if s and s[-1].startswith("sha512_block_data_order")}
    print(f"\nnode pbkdf2: {sum(in_sha.values())} of {sum(stacks.values())} samples in the SHA-512 block function")
    assert share(stacks, lambda s: s == ("sha512_block_data_order_avx2",)) < 0.1  # the leaf alone: 63% before
    whole = share(in_sha, lambda s: "PKCS5_PBKDF2_HMAC" in s and "kdf_pbkdf2_derive" in s, least=20)
    print(f"{whole:.1%} of them reach PKCS5_PBKDF2_HMAC, {share(in_sha, reaches_entry):.1%} _start")
    assert whole >= 0.85, f"{whole:.1%}; commonest: {';'.join(max(in_sha, key=in_sha.__getitem__))}"


def test_a_table_estimated_to_fit_but_over_the_share_is_built_then_left_out(tmp_path: Path) -> None:
    """A 66,000-row budget (33,000 for one binary): libstdc++'s 201 KB of .eh_frame may hold as few as 25k rows at
    the sparsest density measured (and ~27k rows are free once libc, libm, ld.so, libgcc_s and the program are
    in), so it is built; its 34k rows are over the share, so it is left out and counted as too big, as an estimate
    over the share would have been. libc (28k rows) is loaded as before."""
    import subprocess
    import time

    from profiler.sampler import Sampler
    from tests.test_unwind_bpf import FREQUENCY

    exe = tmp_path / "wide_cpp"
    subprocess.run(["g++", "-O2", "-pthread", "-o", str(exe), str(WORKLOADS / "wide_cpp.cc")], check=True)
    with running([str(exe), "thread", "30"]) as pid:
        deadline = time.monotonic() + 10
        while "libstdc++" not in Path(f"/proc/{pid}/maps").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # past the dynamic loader (a loaded machine): the sampler's first load sees every library
        assert "libstdc++" in Path(f"/proc/{pid}/maps").read_text()
        with Sampler(FREQUENCY, pids=[pid], unwind_rows=66_000, unwind="auto") as sampler:
            deadline = time.monotonic() + 30
            rejected: dict[object, int] = {}
            while time.monotonic() < deadline and not rejected:  # built at the first load (pids=), or on an ask
                time.sleep(0.3)
                drain = sampler.drain()
                assert sampler.unwinder is not None
                rejected = dict(sampler.unwinder.maps.rejected)
    kinds = {key[0]: key[1] for key in rejected if isinstance(key, tuple)}
    assert "libstdc++" in str(kinds.get("rows")), (rejected, drain.unwind)
    assert 33_000 < max(rejected.values()) < 66_000, rejected  # its real row count
    u = drain.unwind
    print(f"\nrejected {rejected}; {u['table_rows']} rows loaded")
    assert u["tables_too_big"] >= 1 and 28_000 < u["table_rows"] < 66_000 - 25_000, u  # libc in, libstdc++ not
