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
import os
import subprocess
import sys
import time
from pathlib import Path

from podflame.errors import SystemUnsupported
from profiler.bpfprog import MAX_IMAGE_BYTES, ProgramImage

COMPILE_TIMEOUT_S = 300  # clang takes ~0.3 s here; a wedged compile must not hang the agent's start
_MAX_MESSAGES = 64 << 10


class CompileError(SystemUnsupported):
    """The compile failed; the message carries the tail of the compiler's output."""


def compile_in_child(source: Path, fn_name: str, cflags: list[str], inner_maps: dict[str, str],
                     *, tail_calls: tuple[tuple[str, int, str], ...] = (),
                     timeout: float = COMPILE_TIMEOUT_S) -> tuple[ProgramImage, float]:
    """(image, wall seconds) of compiling `source` in a child interpreter.

    The compiler's messages (warnings included) are passed on to our stderr, where BCC would have
    printed them in-process, and the last of them end the error on failure.
    """
    cmd = [sys.executable, "-m", "profiler.bpfcompile", "--source", str(source), "--fn", fn_name,
           *(f"--inner={name}={template}" for name, template in inner_maps.items()),
           *(f"--tail={array}:{slot}:{fn}" for array, slot, fn in tail_calls), "--", *cflags]
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
             tail_calls: tuple[tuple[str, int, str], ...]) -> ProgramImage:
    import bcc

    from bpf import expanded_source
    from profiler.bpfprog import image_from_bcc

    module = bcc.BPF(text=expanded_source(source), cflags=cflags)
    try:
        return image_from_bcc(module, fn_name, inner_maps, tail_calls)
    finally:
        module.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiler.bpfcompile", description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--fn", required=True, help="the program's function")
    ap.add_argument("--inner", action="append", default=[], metavar="MAP=TEMPLATE",
                    help="an ARRAY_OF_MAPS and the map its C declaration names as its template")
    ap.add_argument("--tail", action="append", default=[], metavar="ARRAY:SLOT:FN",
                    help="a program reached by tail calls, and the program array slot that holds it")
    ap.add_argument("cflags", nargs="*")
    args = ap.parse_args(argv)
    inner = dict(item.split("=", 1) for item in args.inner)
    tails = tuple((array, int(slot), fn) for array, slot, fn in (item.split(":", 2) for item in args.tail))
    try:
        image = _compile(args.source, args.fn, args.cflags, inner, tails)
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
