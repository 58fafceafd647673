# The node agent: Python 3.11 + BCC from Debian (BCC is not on PyPI), the podflame package.
# Build from the repository root:  docker build -f deploy/image/agent.Dockerfile -t podflame-agent:0.1.0 .
#
# Kernel headers are NOT in the image: BCC compiles the sampler against the running kernel, whose
# headers the DaemonSet mounts from the host (/lib/modules and /usr/src, read-only). The entrypoint
# checks for them (or the kernel's own /sys/kernel/kheaders.tar.xz) and says what to do if missing.
FROM debian:bookworm-slim AS build

# The build stage: the package installed as in the image, then its hot modules compiled by mypyc against that
# installed tree (podflame/compiled.py imports them only while those files are unchanged). gcc, Python's headers
# and mypy stay in this stage. The agent runs them unless its environment sets PODFLAME_COMPILE=0.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev python3-bpfcc gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

# --system-site-packages: the venv sees Debian's `bcc` module; everything else comes from PyPI
RUN python3 -m venv --system-site-packages /opt/podflame
COPY pyproject.toml README.md /src/
COPY podflame /src/podflame
COPY profiler /src/profiler
COPY symbolizer /src/symbolizer
COPY web /src/web
COPY bpf /src/bpf
COPY scripts/compile.py /src/scripts/compile.py
RUN /opt/podflame/bin/pip install --no-cache-dir /src \
 && /opt/podflame/bin/pip install --no-cache-dir --target /opt/mypyc "mypy==2.4.1" types-protobuf \
 && site=$(/opt/podflame/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && PYTHONPATH=/opt/mypyc /opt/podflame/bin/python /src/scripts/compile.py --root "$site" --work /tmp/mypyc \
 && /opt/podflame/bin/python -c 'import profiler.agent, podflame.compiled as c; assert c.status.compiled, c.status.reason'

FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-bpfcc libbpfcc ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/podflame /opt/podflame

COPY deploy/image/agent-entrypoint.sh /usr/local/bin/podflame-agent-entrypoint
ENV PATH=/opt/podflame/bin:$PATH PYTHONUNBUFFERED=1
# root with only the capabilities the DaemonSet grants (BPF, PERFMON, SYS_RESOURCE, SYS_PTRACE)
USER 0
ENTRYPOINT ["/usr/local/bin/podflame-agent-entrypoint"]
CMD ["agent", "--help"]
