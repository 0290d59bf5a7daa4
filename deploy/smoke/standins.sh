#!/usr/bin/env bash
# Stand-in base images for the smoke run, built here from Debian packages because no registry image can be
# pulled on this machine. Each is built only when missing (delete one with `podman rmi` to rebuild it):
#
#   localhost/fervid-smoke/bookworm          debootstrap --variant=minbase bookworm + the host's CA certificates
#   docker.io/library/python:3.11-slim-bookworm   Debian's python3 (3.11); the Dockerfile's FROM, by its name
#   ghcr.io/astral-sh/uv:0.9                 FROM scratch: the uv/uvx binaries of PyPI's uv 0.9 wheel
#   localhost/fervid-smoke/redis:7           Debian's redis-server 7 (compose's redis:7-alpine)
#   localhost/fervid-smoke/postgres:15       Debian's PostgreSQL 15 and an entrypoint for POSTGRES_* (postgres:16-alpine)
#   localhost/fervid-smoke/prometheus:2      Debian's prometheus 2 (prom/prometheus)
#   localhost/fervid-smoke/redis-exporter:1  Debian's prometheus-redis-exporter 1.45 (oliver006/redis_exporter,
#                                            alpine variant: /redis_exporter, a shell, wget)
#   localhost/fervid-smoke/postgres-exporter:0   Debian's prometheus-postgres-exporter 0.11
#                                            (quay.io/prometheuscommunity/postgres-exporter: /bin/postgres_exporter)
#
# Debian's packages come from the mirror apt is already configured with (read from apt, written nowhere
# but the image). The host's extra CA certificates (Debian's local CA directory) go into every image: TLS to
# the package registries inside the build needs them where the host needs them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
BASE=localhost/fervid-smoke/bookworm
PYTHON=docker.io/library/python:3.11-slim-bookworm
UV=ghcr.io/astral-sh/uv:0.9
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have() { podman image exists "$1"; }
say() { printf '[standins] %s\n' "$*" >&2; }

mirror() {
    # The Debian archive apt uses for bookworm main (without the address appearing in any file we write).
    local uri
    uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null \
        | awk '$2 == "bookworm" && $3 == "main" {print $1; exit}')
    echo "${uri:-http://deb.debian.org/debian/}"
}

build() {  # build TAG <<Containerfile (context: $work/ctx)
    local tag=$1
    mkdir -p "$work/ctx"
    cat >"$work/Containerfile"
    say "building $tag"
    podman build -q --pull=never -t "$tag" -f "$work/Containerfile" "$work/ctx" >/dev/null
}

if ! have "$BASE"; then
    say "debootstrap bookworm (minbase)"
    rootfs=$work/rootfs
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$(mirror)" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
        cp -r /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$BASE" >/dev/null
fi

if ! have "$PYTHON"; then
    build "$PYTHON" <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends python3 python-is-python3 \
 && rm -rf /var/lib/apt/lists/*
# uv verifies TLS against its own roots unless told where the system's are (the host's extra CAs are there).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
EOF
fi

if ! have "$UV"; then
    say "uv 0.9 from PyPI"
    uv venv -q "$work/uv-venv"
    uv pip install -q --python "$work/uv-venv/bin/python" 'uv>=0.9,<0.10'
    mkdir -p "$work/ctx"
    cp "$work/uv-venv/bin/uv" "$work/uv-venv/bin/uvx" "$work/ctx/"
    build "$UV" <<'EOF'
FROM scratch
COPY uv uvx /
ENTRYPOINT ["/uv"]
EOF
    rm -f "$work/ctx/uv" "$work/ctx/uvx"
fi

if ! have localhost/fervid-smoke/redis:7; then
    mkdir -p "$work/ctx"
    cp "$here/redis-entrypoint.sh" "$work/ctx/docker-entrypoint.sh"
    build localhost/fervid-smoke/redis:7 <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
COPY docker-entrypoint.sh /usr/local/bin/
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
EOF
    rm -f "$work/ctx/docker-entrypoint.sh"
fi

if ! have localhost/fervid-smoke/postgres:15; then
    mkdir -p "$work/ctx"
    cp "$here/postgres-entrypoint.sh" "$work/ctx/"
    build localhost/fervid-smoke/postgres:15 <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:\$PATH PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
EOF
    rm -f "$work/ctx/postgres-entrypoint.sh"
fi

if ! have localhost/fervid-smoke/prometheus:2; then
    build localhost/fervid-smoke/prometheus:2 <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
fi

# The exporters' binaries where the upstream images have them, so compose.yaml's entrypoint and healthchecks
# run unchanged.
if ! have localhost/fervid-smoke/redis-exporter:1; then
    build localhost/fervid-smoke/redis-exporter:1 <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends prometheus-redis-exporter wget \
 && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/prometheus-redis-exporter /redis_exporter
USER 59000:59000
EXPOSE 9121
ENTRYPOINT ["/redis_exporter"]
EOF
fi

if ! have localhost/fervid-smoke/postgres-exporter:0; then
    build localhost/fervid-smoke/postgres-exporter:0 <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends prometheus-postgres-exporter wget \
 && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/prometheus-postgres-exporter /bin/postgres_exporter
USER nobody
EXPOSE 9187
ENTRYPOINT ["/bin/postgres_exporter"]
EOF
fi
say "stand-in images present"
