#!/usr/bin/env bash
# `docker compose up`, proven by a run, with podman: builds fervid's image from the Dockerfile, brings the real
# compose.yaml up in stages, checks every service healthy, a live RTSP camera through to the API's timeline
# (against the clip's ground truth, classified by a checkpoint trained a moment before), every worker's metrics
# through Prometheus and every operations-dashboard query, then `down -v`. deploy/smoke/smoke.py has the checks;
# deploy/README.md says what this proves and what it cannot.
#
#   deploy/smoke.sh           # as root on Debian bookworm; CI runs it after the tests (.ci/run)
#
# Idempotent: the stand-in base images and the image build are cached between runs; the stack, its volumes, the
# camera and the work directory are removed at the end, passed or failed (SMOKE_KEEP=1 keeps them).
# Prints a table (service, healthy, seconds to healthy, RSS) and the time of every phase.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# podman's settings for this run only (runc, cgroupfs, ulimits within ours): see the file.
export CONTAINERS_CONF=$PWD/deploy/smoke/containers.conf
IMAGE=${SMOKE_IMAGE:-localhost/fervid-smoke/fervid}
t0=$(date +%s)
timing() { printf '%-50s %7d\n' "$1" "$2"; }
phases=()

# --- what the machine needs: podman and its helpers, debootstrap (stand-in images), GStreamer's RTSP server ---
t=$(date +%s)
apt_packages=(podman buildah runc fuse-overlayfs slirp4netns uidmap debootstrap
    golang-github-containernetworking-plugin-dnsname
    python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v uv >/dev/null || python3 -m pip install -q uv
phases+=("apt packages (${#missing[@]} missing)|$(($(date +%s) - t))")

# --- stand-in base images (no registry can be pulled here), then fervid's image from the real Dockerfile ---
t=$(date +%s)
deploy/smoke/standins.sh
phases+=("stand-in base images|$(($(date +%s) - t))")

t=$(date +%s)
old=$(podman image inspect --format '{{.Id}}' "$IMAGE:cuda" 2>/dev/null || true)
build_log=$(mktemp)
# The cuda target: the cpu target installs torch from PyTorch's own index, which cannot be reached here; PyPI's
# torch runs on the CPU, so the cuda image stands in for it (deploy/smoke/compose.smoke.yaml).
if ! podman build --pull=never --target cuda --build-arg PYTHON_VERSION=3.11 -t "$IMAGE:cuda" . >"$build_log" 2>&1; then
    tail -40 "$build_log" >&2
    echo "smoke: FAILED: the image did not build" >&2
    exit 1
fi
rm -f "$build_log"
new=$(podman image inspect --format '{{.Id}}' "$IMAGE:cuda")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true  # the previous build: ~7 GB
    podman image prune -f --filter "until=$(($(date +%s) - t))s" >/dev/null 2>&1 || true  # its stages
fi
phases+=("podman build --target cuda|$(($(date +%s) - t))")

# --- the run ---
t=$(date +%s)
set +e
if [ -n "${SMOKE_KEEP:-}" ]; then
    uv run python deploy/smoke/smoke.py --image "$IMAGE" --keep
else
    uv run python deploy/smoke/smoke.py --image "$IMAGE"
fi
rc=$?
set -e
phases+=("compose run and checks (smoke.py)|$(($(date +%s) - t))")

echo
echo "deploy/smoke.sh                                    seconds"
for p in "${phases[@]}"; do timing "${p%|*}" "${p##*|}"; done
timing "total" "$(($(date +%s) - t0))"
exit "$rc"
