#!/usr/bin/env bash
# Installs everything podflame needs on a Debian 12 host, idempotently: quick when already done.
# Called by `make run` and `make test`; prints each action it takes and why.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  say "podflame must run as root: it loads eBPF programs and opens perf events on every CPU (CAP_BPF + CAP_PERFMON),"
  say "and reads other processes' /proc/PID/maps and binaries (CAP_SYS_PTRACE). Re-run as root."
  exit 1
fi

# Debian packages: BCC (the sampler's compiler/loader), kernel headers (BCC compiles BPF C at start),
# the pprof client and Chromium (test oracles), binutils/llvm (symbolizer oracles), profile-bpfcc (bench peer),
# libc6-dbg (libc's DWARF by build id: the symbolizer's separate-debug-file corpus), python3-dev + gcc (mypyc's
# compile of the hot modules, below).
PKGS=(python3-venv python3-dev python3-bpfcc bpfcc-tools libdw1 linux-headers-amd64 golang-go chromium binutils llvm-14 linux-perf make gcc g++ libc6-dbg)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Kernel headers: BCC looks in /lib/modules/$(uname -r)/{build,source}. Custom kernels (like these VMs')
# ship none; Debian's 6.1 headers are enough for a perf-event sampler. Never touch real headers.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/include/linux/kconfig.h" ] && [ ! -e "$kdir/source/include/linux/kconfig.h" ]; then
  amd=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
  if [ -z "$amd" ] || [ -z "$common" ]; then
    say "no kernel headers for $(uname -r) and no Debian linux-headers to link: BCC cannot compile the sampler"; exit 1
  fi
  say "no kernel headers for $(uname -r): linking $kdir/build -> $amd and $kdir/source -> $common"
  say "(BCC compiles the sampler against them; kconfig.h lives in the -common folder, hence both links)"
  mkdir -p "$kdir"
  ln -sfn "$amd" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
fi

# Python: a venv in .venv from Debian's /usr/bin/python3, the interpreter python3-bpfcc is packaged for.
# It is also built with PGO and LTO and links libpython statically: the agent, the symbolizer and the
# server run 10-20% faster on it than on a --enable-shared build without PGO (pyenv's default python3
# here). BCC is Debian-only, so expose just its package.
PY=/usr/bin/python3
if [ -x .venv/bin/python ] && ! grep -q "^home = $(dirname "$PY")\$" .venv/pyvenv.cfg 2>/dev/null; then
  say "recreating .venv from $PY (it was made from another interpreter: $(grep '^home' .venv/pyvenv.cfg 2>/dev/null))"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv from $PY"
  "$PY" -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# A link inside site-packages, not a .pth to a folder beside it: a module outside site-packages is the project's
# own to hypothesis, which then parses bcc/__init__.py for constants and warns of its invalid escape ("\.").
if [ ! -e "$site/bcc" ]; then
  say "exposing Debian's BCC (python3-bpfcc) to .venv, and nothing else from dist-packages"
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi
rm -rf .venv/bcc-only "$site/podflame-bcc.pth"  # the layout before stop 23
stamp=.venv/.podflame-installed
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing podflame and its Python dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat 2> >(grep -v 'is ignored: it is neither' >&2)  # compat: a plain path .pth; the default import-hook finder costs every process ~15 ms
  touch "$stamp"
fi

# The agent's hot modules compiled by mypyc (podflame/compiled.py says how they are found and when refused):
# the drain thread in ~0.7x the CPU. Quick when the sources did not change; a failure leaves the pure-Python source.
# PODFLAME_COMPILE=0 (here and where podflame runs) keeps to the source: the compiled set is removed.
if [ "${PODFLAME_COMPILE:-1}" = 0 ]; then
  if [ -e podflame/_compiled ]; then
    say "PODFLAME_COMPILE=0: removing the compiled modules; podflame runs its pure-Python source"
    rm -rf podflame/_compiled
  fi
elif ! .venv/bin/python scripts/compile.py; then
  say "compiling the hot modules failed (above): podflame runs its pure-Python source (slower; PODFLAME_COMPILE=0 skips the compile)"
fi
