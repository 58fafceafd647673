# The server: ingest, store (SQLite + zstd under /data), query, UI. No BPF, no root.
# Build from the repository root:  docker build -f deploy/image/server.Dockerfile -t podflame-server:0.1.0 .
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/podflame
COPY pyproject.toml README.md /src/
COPY podflame /src/podflame
COPY profiler /src/profiler
COPY symbolizer /src/symbolizer
COPY web /src/web
COPY bpf /src/bpf
RUN /opt/podflame/bin/pip install --no-cache-dir "/src[clickhouse]" && rm -rf /src \
 && useradd --system --uid 10001 --home-dir /data podflame && mkdir /data && chown podflame /data

ENV PATH=/opt/podflame/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
VOLUME /data
EXPOSE 7070
ENTRYPOINT ["podflame"]
# Beyond loopback the server needs token files (or --insecure): the Deployment passes them.
CMD ["server", "--listen=0.0.0.0:7070", "--data=/data", "--ingest-token-file=/etc/podflame/tokens/ingest", \
     "--read-token-file=/etc/podflame/tokens/read"]
