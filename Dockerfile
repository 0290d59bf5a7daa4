# syntax=docker/dockerfile:1.7
# fervid images: `docker build --target cuda -t fervid:cuda .` and `docker build --target cpu -t fervid:cpu .`
#
# Both come from the same uv.lock. PyPI's Linux torch wheels carry their CUDA runtime (the nvidia-* wheels),
# so the `cuda` image needs only the host's NVIDIA driver and the container toolkit, not a CUDA base image.
# The `cpu` image installs the lock without torch, torchvision, triton and the nvidia-* wheels, then the CPU
# builds of the same torch/torchvision versions (several GB smaller).
# Built and run by deploy/smoke.sh on every CI run (podman, the `cuda` target; see deploy/README.md).
# Bind-mount targets are absolute: BuildKit reads a relative one against WORKDIR, buildah rejects it.

ARG PYTHON_VERSION=3.12
ARG UV_VERSION=0.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
COPY --from=uv /uv /usr/local/bin/uv
WORKDIR /app

# --- the project's own files, for both builds --------------------------------------------------------------
FROM scratch AS source
COPY pyproject.toml uv.lock README.md /app/
COPY fervid /app/fervid
COPY ingest /app/ingest
COPY detector /app/detector
COPY classifier /app/classifier
COPY storage /app/storage

# --- dependencies (the big, rarely changing layer), then the project ---------------------------------------
FROM base AS build-cuda
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/app/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/app/pyproject.toml \
    uv sync --frozen --no-dev --no-install-project
COPY --from=source /app ./
# --reinstall-package fervid: uv caches the wheel it built from a local directory and rebuilds it only when
# pyproject.toml changes, so without it an edited source file would not reach the image.
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --no-editable --reinstall-package fervid

FROM base AS build-cpu
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/app/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/app/pyproject.toml \
    set -eu; \
    skip=$(grep -oE '^name = "(torch|torchvision|triton|nvidia-[a-z0-9-]+)"$' uv.lock | cut -d'"' -f2 | sed 's/^/--no-install-package /'); \
    uv sync --frozen --no-dev --no-install-project $skip; \
    torch=$(awk '/^name = "torch"$/{getline; print $3}' uv.lock | tr -d '"'); \
    vision=$(awk '/^name = "torchvision"$/{getline; print $3}' uv.lock | tr -d '"'); \
    uv pip install --python /app/.venv/bin/python --no-deps --index-url https://download.pytorch.org/whl/cpu \
        "torch==${torch}+cpu" "torchvision==${vision}+cpu"
COPY --from=source /app ./
# --inexact: keep the CPU torch installed above (an exact sync would remove what the lock does not list).
RUN --mount=type=cache,target=/root/.cache/uv \
    set -eu; \
    skip=$(grep -oE '^name = "(torch|torchvision|triton|nvidia-[a-z0-9-]+)"$' uv.lock | cut -d'"' -f2 | sed 's/^/--no-install-package /'); \
    uv sync --frozen --no-dev --no-editable --inexact --reinstall-package fervid $skip

# --- runtime: the venv only, non-root ---------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/app/.venv/bin:$PATH FERVID_DATA_DIR=/data FERVID_METRICS_PORT=9070
# A C++ compiler for torch.compile (FERVID_CLASSIFIER__COMPILE): inductor builds its CPU kernels, and Triton
# its GPU launcher, with it at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 fervid \
 && useradd --system --uid 10001 --gid fervid --home-dir /app --shell /usr/sbin/nologin fervid \
 && mkdir -p /data /models && chown fervid:fervid /data
WORKDIR /app
USER fervid
# Metrics, /health and /ready of every worker: outside Prometheus' exporter range (9100-9999, all allocated).
EXPOSE 9070
# Workers exit within 10 s of SIGTERM (the batch in hand is finished or returned); exec form so they get it.
STOPSIGNAL SIGTERM
# The entrypoint reads secrets from files (VAR_FILE), then execs `fervid` (deploy/docker-entrypoint.py).
ENTRYPOINT ["fervid-entrypoint", "fervid"]
CMD ["--help"]

FROM runtime AS cpu
COPY --from=build-cpu --chown=fervid:fervid /app/.venv /app/.venv
# After the venv: editing the entrypoint rebuilds one small layer, not the venv's.
COPY deploy/docker-entrypoint.py /usr/local/bin/fervid-entrypoint

FROM runtime AS cuda
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build-cuda --chown=fervid:fervid /app/.venv /app/.venv
COPY deploy/docker-entrypoint.py /usr/local/bin/fervid-entrypoint
