"""Compile a BPF program with BCC in a child process and hand back its `ProgramImage`.

BCC compiles with clang and LLVM linked into libbcc: importing it maps ~100 MB of code and heap into
the process, and neither can be unloaded afterwards, so an agent that compiled in-process kept that
resident for its whole life (peak RSS 195 MB on a first start against 93 MB on a restart that loaded
the cached image). A child that compiles, prints the image and exits gives all of it back; the agent
never imports bcc at all.

Run as `python -m profiler.bpfcompile --source FILE --fn NAME [--inner MAP=TEMPLATE] [--tail ARRAY:SLOT:FN]
-- CFLAGS...`:
the image's JSON on stdout, BCC's and clang's messages on stderr, exit status 1 on failure.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

from podflame.errors import SystemUnsupported
from profiler.bpfprog import (
    LD_IMM64,
    MAX_IMAGE_BYTES,
    PROG_TYPE_PERF_EVENT,
    PSEUDO_FUNC,
    PSEUDO_MAP_FD,
    MapSpec,
    ProgramImage,
    TailProgram,
    TracepointProgram,
    link_callbacks,
    map_info,
)

COMPILE_TIMEOUT_S = 300  # clang takes ~0.3 s here; a wedged compile must not hang the agent's start
_MAX_MESSAGES = 64 << 10


class CompileError(SystemUnsupported):
    """The compile failed; the message carries the tail of the compiler's output."""


def compile_in_child(source: Path, fn_name: str, cflags: list[str], inner_maps: dict[str, str],
                     *, tail_calls: tuple[tuple[str, int, str], ...] = (),
                     tracepoints: tuple[tuple[str, str], ...] = (),
                     timeout: float = COMPILE_TIMEOUT_S) -> tuple[ProgramImage, float]:
    """(image, wall seconds) of compiling `source` in a child interpreter.

    The compiler's messages (warnings included) are passed on to our stderr, where BCC would have
    printed them in-process, and the last of them end the error on failure.
    """
    cmd = [sys.executable, "-m", "profiler.bpfcompile", "--source", str(source), "--fn", fn_name,
           *(f"--inner={name}={template}" for name, template in inner_maps.items()),
           *(f"--tail={array}:{slot}:{fn}" for array, slot, fn in tail_calls),
           *(f"--tracepoint={fn}:{tp}" for fn, tp in tracepoints), "--", *cflags]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise CompileError(f"compiling {source} took over {timeout:.0f} s") from e
    except OSError as e:
        raise CompileError(f"could not start the compiler process {sys.executable}: {e}") from e
    seconds = time.perf_counter() - started
    messages = done.stderr[-_MAX_MESSAGES:].decode("utf-8", "replace")
    if messages:
        sys.stderr.write(messages)
    if done.returncode != 0:
        tail = "\n".join(messages.strip().splitlines()[-15:])
        raise CompileError(f"exit status {done.returncode}" + (f":\n{tail}" if tail else ""))
    if len(done.stdout) > MAX_IMAGE_BYTES:
        raise CompileError(f"the compiler process printed over {MAX_IMAGE_BYTES} bytes")
    try:
        return ProgramImage.from_json(done.stdout.decode()), seconds
    except (ValueError, UnicodeDecodeError) as e:
        raise CompileError(f"the compiler process printed no valid program image ({e})") from e


def _compile(source: Path, fn_name: str, cflags: list[str], inner_maps: dict[str, str],
             tail_calls: tuple[tuple[str, int, str], ...],
             tracepoints: tuple[tuple[str, str], ...] = ()) -> ProgramImage:
    import bcc

    from bpf import expanded_source

    module = bcc.BPF(text=expanded_source(source), cflags=cflags)
    try:
        return image_from_bcc(module, fn_name, inner_maps, tail_calls, tracepoints)
    finally:
        module.cleanup()


def image_from_bcc(bpf_module: object, fn_name: str, inner_maps: dict[str, str],
                   tail_calls: tuple[tuple[str, int, str], ...] = (),
                   tracepoints: tuple[tuple[str, str], ...] = ()) -> ProgramImage:
    """Read a program and its maps out of a compiled `bcc.BPF` (which the caller then cleans up).

    `inner_maps` names each ARRAY_OF_MAPS' template map, as the C source declares it: the kernel
    does not report it. `tail_calls` lists (program array, slot, function) for the programs the
    entry program reaches by bpf_tail_call; `tracepoints` (function, raw tracepoint) the programs
    attached to tracepoints beside it.
    """
    from bcc.libbcc import lib

    own = ct.CDLL("libbcc.so.0")
    own.bpf_num_tables.argtypes, own.bpf_num_tables.restype = [ct.c_void_p], ct.c_size_t
    own.bpf_table_name.argtypes, own.bpf_table_name.restype = [ct.c_void_p, ct.c_size_t], ct.c_char_p
    module = bpf_module.module  # type: ignore[attr-defined]
    maps: list[MapSpec] = []
    by_fd: dict[int, str] = {}
    for i in range(own.bpf_num_tables(module)):
        name = own.bpf_table_name(module, i).decode()
        fd = lib.bpf_table_fd(module, name.encode())
        info = map_info(fd)
        maps.append(MapSpec(name, info.type, info.key_size, info.value_size, info.max_entries, info.map_flags,
                            inner_maps.get(name)))
        by_fd[fd] = name

    def code(fn: str) -> tuple[bytes, tuple[tuple[int, str], ...]]:
        insns = link_callbacks(bytes(bpf_module.dump_func(fn.encode())))  # type: ignore[attr-defined]
        return insns, _map_relocations(insns, by_fd)

    insns, relocations = code(fn_name)
    tails = tuple(TailProgram(fn, *code(fn), array, index) for array, index, fn in tail_calls)
    raw = tuple(TracepointProgram(fn, *code(fn), tp) for fn, tp in tracepoints)
    image = ProgramImage(name=fn_name, prog_type=PROG_TYPE_PERF_EVENT,
                         license=lib.bpf_module_license(module).decode(),
                         kern_version=lib.bpf_module_kern_version(module), insns=insns,
                         relocations=relocations, maps=tuple(maps), tail_programs=tails,
                         tracepoint_programs=raw)
    image.check()
    return image


def _map_relocations(insns: bytes, by_fd: dict[int, str]) -> tuple[tuple[int, str], ...]:
    """(instruction index, map name) of every map fd BCC wrote into `insns`."""
    relocations = []
    i = 0
    while i < len(insns):
        if insns[i] == LD_IMM64:  # 16 bytes; maps are referenced by fd in the first half's imm
            src = insns[i + 1] >> 4
            if src == PSEUDO_MAP_FD:
                fd = struct.unpack_from("<i", insns, i + 4)[0]
                if fd not in by_fd:
                    raise ValueError(f"instruction {i // 8} refers to fd {fd}, not a map of this program")
                relocations.append((i // 8, by_fd[fd]))
            elif src not in (0, PSEUDO_FUNC):
                raise ValueError(f"instruction {i // 8}: ld_imm64 source {src} is not supported by the image loader")
            i += 16
        else:
            i += 8
    return tuple(relocations)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiler.bpfcompile", description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--fn", required=True, help="the program's function")
    ap.add_argument("--inner", action="append", default=[], metavar="MAP=TEMPLATE",
                    help="an ARRAY_OF_MAPS and the map its C declaration names as its template")
    ap.add_argument("--tail", action="append", default=[], metavar="ARRAY:SLOT:FN",
                    help="a program reached by tail calls, and the program array slot that holds it")
    ap.add_argument("--tracepoint", action="append", default=[], metavar="FN:TRACEPOINT",
                    help="a program attached to a raw tracepoint beside the entry program")
    ap.add_argument("cflags", nargs="*")
    args = ap.parse_args(argv)
    inner = dict(item.split("=", 1) for item in args.inner)
    tails = tuple((array, int(slot), fn) for array, slot, fn in (item.split(":", 2) for item in args.tail))
    try:
        raw = tuple((fn, tp) for fn, tp in (item.split(":", 1) for item in args.tracepoint))
        image = _compile(args.source, args.fn, args.cflags, inner, tails, raw)
    except ImportError as e:
        print(f"BCC is not importable ({e}): install Debian's python3-bpfcc and run scripts/setup.sh, "
              "which exposes it to the venv", file=sys.stderr)
        return 1
    except Exception as e:  # BCC raises bare Exception; clang's messages are already on stderr
        print(f"BCC could not compile {args.source}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(image.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
