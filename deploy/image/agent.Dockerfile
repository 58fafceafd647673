# The node agent: Python 3.11 + BCC from Debian (BCC is not on PyPI), the podflame package.
# Build from the repository root:  docker build -f deploy/image/agent.Dockerfile -t podflame-agent:0.1.0 .
#
# Kernel headers are NOT in the image: BCC compiles the sampler against the running kernel, whose
# headers the DaemonSet mounts from the host (/lib/modules and /usr/src, read-only). The entrypoint
# checks for them (or the kernel's own /sys/kernel/kheaders.tar.xz) and says what to do if missing.
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-bpfcc libbpfcc ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# --system-site-packages: the venv sees Debian's `bcc` module; everything else comes from PyPI
RUN python3 -m venv --system-site-packages /opt/podflame
COPY pyproject.toml README.md /src/
COPY podflame /src/podflame
COPY profiler /src/profiler
COPY symbolizer /src/symbolizer
COPY web /src/web
COPY bpf /src/bpf
RUN /opt/podflame/bin/pip install --no-cache-dir /src && rm -rf /src

COPY deploy/image/agent-entrypoint.sh /usr/local/bin/podflame-agent-entrypoint
ENV PATH=/opt/podflame/bin:$PATH PYTHONUNBUFFERED=1
# root with only the capabilities the DaemonSet grants (BPF, PERFMON, SYS_RESOURCE, SYS_PTRACE)
USER 0
ENTRYPOINT ["/usr/local/bin/podflame-agent-entrypoint"]
CMD ["agent", "--help"]
