"""Stacks that end or resume somewhere else than main's `_start` (tests/workloads/stack_ends.c, gcc -O2, no frame
pointers), sampled with the real agent (`podflame record --pid`) in a pod-shaped cgroup, against the chain the
program is built with and `perf record --call-graph dwarf`.

A makecontext/swapcontext coroutine (C/C++ servers, QEMU, coroutine libraries) returns into glibc's
`__start_context`, whose address makecontext pushes on the new stack: no call precedes it, and the byte before it
is in no FDE. The walker looked that return address up at address - 1, found the gap, stepped with rbp (any value
at -O2) and gave every coroutine sample a bogus `[no mapping]` root. Now a return address at the first byte of a
function whose preceding byte has no CFI ends the walk there, where libgcc and perf end it. A fiber switched by
assembly without CFI in boost.context's layout had the same bogus root: its frame pointer pointed into its own
code, which now ends the walk. A SIGALRM handler on a sigaltstack and a siglongjmp out of a handler were right
already; kept here. Such pushed return addresses (__start_context, the signal frame's __restore_rt) are named by
the function they start, as addr2line names that address (perf looks up the byte before: [unknown]). A sample
inside __restore_rt's closing rt_sigreturn (CI saw 1 in 600) once gave a bogus root: its state is one byte past
the FDE (tests/test_unwind_tables.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from profiler.unwind.build import build_table
from profiler.unwind.table import CFA_NONE
from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import Stacks, commonest, perf_stacks, record, running, share

pytestmark = pytest.mark.bpf

CO_CHAIN = ("co_entry", "co_mid", "co_leaf")
LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")


@pytest.fixture(scope="module")
def stack_ends(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("ends") / "stack_ends"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(WORKLOADS / "stack_ends.c")], check=True)
    return exe


def bogus(stacks: Stacks) -> float:
    return share(stacks, lambda s: "[no mapping]" in s or "[unknown]" in s, least=1)


def test_a_makecontext_coroutine_ends_at_the_pushed_return_address(stack_ends: Path, tmp_path: Path) -> None:
    where = tmp_path / "where"
    with running([str(stack_ends), "ucontext", "600", str(where)]) as pid:
        stacks = record(pid)
        theirs = perf_stacks(pid, tmp_path)
    pushed = where.read_text().strip()  # "libc.so.6+0x...": what makecontext pushed, read by the program itself
    offset = int(pushed.rpartition("+")[2], 16)
    # that address is __start_context's first byte: the frame is named by the function it starts (addr2line's
    # name for that very address), or by the address where no symbol starts there
    oracle = subprocess.run(["addr2line", "-f", "-e", str(LIBC), hex(offset)], capture_output=True, text=True,
                            check=True).stdout.split("\n")[0]
    root = pushed if oracle == "??" else oracle
    rows = build_table(str(LIBC))  # the precondition: that address starts CFI right after a gap
    assert rows.lookup(offset - 1) in (None, (CFA_NONE, 0, 0, 0)) and rows.lookup(offset) != rows.lookup(offset - 1)
    coroutine = {s: n for s, n in stacks.items() if "co_entry" in s}
    in_co = sum(coroutine.values()) / sum(stacks.values())
    main_side = share(Stacks({s: n for s, n in stacks.items() if "co_entry" not in s}),
                      lambda s: s[0] == "_start" and "drive" in s, least=1) if in_co < 1 else 1.0
    co_exact = share(Stacks(coroutine), lambda s: s == (root, *CO_CHAIN), least=20)
    # perf names the frame by address - 1 ([unknown]: Debian's libc has no symbol for __start_context)
    perf_co = share(Stacks({s: n for s, n in theirs.items() if "co_leaf" in s}),
                    lambda s: s[1:] == CO_CHAIN and s[0] == "[unknown]", least=10)
    print(f"\nucontext coroutine: {co_exact:.1%} of its samples exactly {root};{';'.join(CO_CHAIN)} "
          f"({in_co:.1%} of samples in it; the main side's from _start {main_side:.1%}), bogus root "
          f"{bogus(stacks):.1%}; perf --call-graph dwarf: {perf_co:.1%} end at the same frame")
    assert in_co >= 0.8  # the coroutine spins, main barely runs
    assert co_exact >= 0.9, f"{co_exact:.1%}; commonest: {commonest(stacks)}"
    assert bogus(stacks) == 0
    assert perf_co >= 0.9  # the oracle ends the stack at that frame too


def test_a_fiber_entered_through_a_trampoline_ends_at_it(stack_ends: Path, tmp_path: Path) -> None:
    """boost.context's layout (PHP fibers, folly, brpc), in assembly without CFI: the fiber's return address is
    a `finish` label inside that assembly (named by the symbol before it, fib_trampoline), and rbp holds that same
    address. The walker stepped the gap frame with rbp and read code as a frame: a bogus root above it."""
    with running([str(stack_ends), "fiber", "600"]) as pid:
        stacks = record(pid)
        theirs = perf_stacks(pid, tmp_path)
    chain = ("fib_trampoline", "fib_entry", "fib_mid", "fib_leaf")
    fiber = Stacks({s: n for s, n in stacks.items() if "fib_entry" in s})
    got = share(fiber, lambda s: s == chain, least=20)
    perf = share(Stacks({s: n for s, n in theirs.items() if "fib_leaf" in s}), lambda s: s == chain, least=10)
    print(f"\nfiber: {got:.1%} of its samples exactly {';'.join(chain)}, bogus root {bogus(stacks):.1%}; "
          f"perf --call-graph dwarf: {perf:.1%}")
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(fiber)}"
    assert bogus(stacks) == 0
    assert perf >= 0.9


def test_a_guess_for_the_caller_of_code_without_cfi_that_lands_in_data_ends_the_stack(
        stack_ends: Path, tmp_path: Path) -> None:
    """A leaf in assembly without CFI holds a data pointer at [rsp] and in rbp. The walker guessed its caller
    from them and recorded the data address as a `[no mapping]` root (the fiber test's fib_jump met it in 1
    sample of 600 in CI). An address outside every file mapping that follows no call is not a return address:
    the stack ends at the leaf, where perf's ends."""
    with running([str(stack_ends), "nocfi", "600"]) as pid:
        stacks = record(pid)
        theirs = perf_stacks(pid, tmp_path)
    leaf = Stacks({s: n for s, n in stacks.items() if s[-1] == "nocfi_spin"})
    got = share(leaf, lambda s: s == ("nocfi_spin",), least=20)
    perf = share(Stacks({s: n for s, n in theirs.items() if s[-1] == "nocfi_spin"}),
                 lambda s: s == ("nocfi_spin",), least=10)
    print(f"\nleaf without CFI: {sum(leaf.values()) / sum(stacks.values()):.1%} of samples in it, {got:.1%} of "
          f"them end there, bogus {bogus(stacks):.1%}; perf --call-graph dwarf: {perf:.1%} end there")
    assert sum(leaf.values()) >= 0.8 * sum(stacks.values())
    assert got >= 0.95, f"{got:.1%}; commonest: {commonest(leaf)}"
    assert bogus(stacks) == 0
    assert perf >= 0.9


def test_a_handler_on_a_sigaltstack_unwinds_into_the_interrupted_code(stack_ends: Path) -> None:
    with running([str(stack_ends), "altstack", "600"]) as pid:
        stacks = record(pid)
    handler = Stacks({s: n for s, n in stacks.items() if "on_alt" in s})

    def through(s: tuple[str, ...]) -> bool:  # _start ... main;wait_alt[;callee] <signal frame> on_alt;alt_mid;alt_leaf
        at = s.index("on_alt")
        return (s[0] == "_start" and s[at:at + 3] == ("on_alt", "alt_mid", "alt_leaf") and "wait_alt" in s[:at]
                and s[s.index("main") + 1] == "wait_alt")

    got = share(handler, through, least=20)
    # the frame the kernel pushed: the return address is __restore_rt's first byte, named as such (perf names
    # the byte before it: [unknown])
    trampoline = share(handler, lambda s: s[s.index("on_alt") - 1] == "__restore_rt", least=20)
    print(f"\nsigaltstack handler: {got:.1%} of its samples from _start through the signal frame, "
          f"{trampoline:.1%} name it __restore_rt, bogus {bogus(stacks):.1%}")
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(handler)}"
    assert trampoline >= 0.9
    assert bogus(stacks) == 0


def test_code_resumed_by_siglongjmp_out_of_a_handler_unwinds_from_main(stack_ends: Path) -> None:
    with running([str(stack_ends), "longjmp", "600"]) as pid:
        stacks = record(pid)
    chain = ("main", "jumped", "jumped_mid", "jumped_leaf")
    got = share(stacks, lambda s: s[0] == "_start" and "main" in s and s[s.index("main"):s.index("main") + 4] == chain)
    exact = share(stacks, lambda s: s[0] == "_start" and s[-4:] == chain)
    print(f"\nsiglongjmp: {exact:.1%} of samples exactly _start..{';'.join(chain)}, {got:.1%} through it, "
          f"bogus {bogus(stacks):.1%}")
    assert got >= 0.95 and exact >= 0.85, f"{exact:.1%}; commonest: {commonest(stacks)}"
    assert bogus(stacks) == 0
