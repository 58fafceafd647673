"""OpenSSL's AES-GCM assembly keeps its CFA in a caller-saved register across its calls, sampled with `podflame
record --pid` against `perf record --call-graph dwarf`.

aesni_gcm_encrypt (Debian's libcrypto.so.3, and node's bundled copy) saves the entry rsp in rax, realigns the
stack and says `CFA = rax + 8` (DW_CFA_def_cfa_register) all through its body, which calls _aesni_ctr32_ghash_6x,
a leaf that leaves rax alone. The walker evaluated a register CFA only at the sampled frame, so every sample in
the block function (~90% of `openssl speed -evp aes-128-gcm` with 16 KB blocks) ended after two unnamed frames:
2.0-4.1% reached the entry through EVP_EncryptUpdate, perf 90%. No frame's CFI restores a caller-saved
register, so its value in a caller is the sampled one, as libunwind and libdw (perf) and gdb read it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_unwind_bpf import commonest, perf_stacks, record, running, share

pytestmark = pytest.mark.bpf


def through_the_cipher(s: tuple[str, ...]) -> bool:
    """From the process's start (openssl is stripped: libc's frames say it) into EVP_EncryptUpdate."""
    return "__libc_start_call_main" in s and "EVP_EncryptUpdate" in s


def test_aes_gcm_assembly_unwinds_through_its_register_cfa(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is installed on these machines"
    with running([openssl, "speed", "-seconds", "600", "-bytes", "16384", "-evp", "aes-128-gcm"]) as pid:
        ours = record(pid)
        theirs = perf_stacks(pid, tmp_path)
    got, oracle = share(ours, through_the_cipher), share(theirs, through_the_cipher)
    print(f"\naes-128-gcm: {got:.1%} of {sum(ours.values())} samples from the start through EVP_EncryptUpdate "
          f"(perf --call-graph dwarf: {oracle:.1%})")
    assert oracle >= 0.7, f"perf: {commonest(theirs)}"
    assert got >= 0.8, f"{got:.1%}; commonest: {commonest(ours)}"
