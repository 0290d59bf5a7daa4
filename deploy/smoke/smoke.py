"""deploy/smoke.sh's driver: the real compose.yaml, brought up with podman-compose in stages and checked end to end.

    uv run python deploy/smoke/smoke.py --image localhost/fervid-smoke/fervid [--keep]

Expects the stand-in base images and the fervid image (deploy/smoke.sh builds them). In a fresh work directory:
secrets as files, a .env, a clip with known faces served by a real RTSP server on the host, a cameras.yaml
naming it, and a classifier checkpoint trained a moment before with `fervid train` (in the image, on generated
faces, one epoch of a small model) and exported with `fervid export`; the image's installed code is checked to
be this checkout's. Then, with compose.yaml + compose.cpu.yaml + deploy/smoke/compose.smoke.yaml:

1. redis, postgres, prometheus up, each healthy by its own healthcheck; the Redis and PostgreSQL exporters
   healthy (they read their servers with the secrets); `migrate` runs to exit 0; storage, api, detector,
   classifier up and healthy; then ingest (podman-compose ignores `depends_on` conditions and, without
   systemd, never runs healthchecks: this script runs them, `podman healthcheck run`);
2. every Prometheus target up; every PromQL query of the "fervid — operations" dashboard returns a series;
   after the timeline checks, the storage container is restarted and the "Worker restarts" panel must count
   exactly that one restart;
3. a missing or foreign CLASSIFIER_CHECKPOINT stops the classifier at start with one line naming the path;
   ingest stopped (SIGTERM) after the camera has given enough frames; once the pipeline has drained, the
   timeline through the API holds the clip's faces (ground truth per frame x frames ingest published, less
   those it dropped, within 2%), classified by the trained checkpoint (its model id on the events);
4. a summary table (service, healthy, seconds to healthy, RSS) and the timings; `down -v` always.

Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["compose.yaml", "compose.cpu.yaml", "deploy/smoke/compose.smoke.yaml"]
PODMAN_COMPOSE = ["uvx", "--from", "podman-compose==1.6.0", "podman-compose"]
SECRETS = ("redis_password", "postgres_password", "api_token", "grafana_admin_password")
CAMERA = "smoke-cam"
RUN_NAME = "smoke-run"  # the trained checkpoint: /models/smoke-run/best.pt
STAGES = [
    ["redis", "postgres", "prometheus"],
    ["redis-exporter", "postgres-exporter"],
    ["migrate"],
    ["storage", "api", "detector", "classifier"],
    ["ingest"],
]
MIN_FRAMES = 40  # frames on the timeline before ingest is stopped: the clip twice (4 s at 5 fps)
TOLERANCE = 0.02
BACKLOG_SERIES = {"fervid_stream_lag_entries", "fervid_stream_pending_entries"}


class SmokeError(Exception):
    pass


class Fatal(SmokeError):
    """Waiting longer cannot help (a container exited)."""


@dataclass
class Run:
    work: Path
    image: str
    project: str
    t0: float = field(default_factory=time.monotonic)
    timings: list[tuple[str, float]] = field(default_factory=list)
    health: dict[str, tuple[str, float | None]] = field(default_factory=dict)  # service -> (state, seconds)
    api_port: int = 0
    prometheus_port: int = 0
    token: str = ""

    def log(self, message: str) -> None:
        print(f"[smoke {time.monotonic() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    def phase(self, name: str, started: float) -> None:
        self.timings.append((name, time.monotonic() - started))

    # -- podman ------------------------------------------------------------------------------------------------
    def compose(self, *args: str, check: bool = True, quiet: bool = True) -> subprocess.CompletedProcess[str]:
        files = [a for f in COMPOSE_FILES for a in ("-f", f)]
        cmd = [*PODMAN_COMPOSE, "-p", self.project, "--env-file", str(self.work / ".env"), *files, *args]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=quiet, text=True)
        if check and out.returncode != 0:
            raise SmokeError(f"podman-compose {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
        return out

    def container(self, service: str) -> str:
        project = f"label=io.podman.compose.project={self.project}"
        labelled = f"label=com.docker.compose.service={service}"
        names = podman("ps", "-a", "--filter", project, "--filter", labelled, "--format", "{{.Names}}").split()
        if not names:
            raise SmokeError(f"no container for service {service}")
        return sorted(names)[0]


def podman(*args: str, check: bool = True) -> str:
    out = subprocess.run(["podman", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SmokeError(f"podman {' '.join(args[:3])} failed: {out.stderr.strip()[-1000:]}")
    return out.stdout


def container_logs(name: str) -> str:
    out = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
    return out.stdout + out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, token: str | None = None, timeout: float = 10) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait(what: str, probe: Any, timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Fatal:
            raise
        except (OSError, ValueError, SmokeError) as exc:
            last = exc
        time.sleep(interval)
    raise SmokeError(f"timed out after {timeout:.0f} s waiting for {what} (last: {str(last)[:500]})")


# -- preparation --------------------------------------------------------------------------------------------


def prepare(run: Run) -> dict[str, Any]:
    """Secrets, .env, the clip and its ground truth, cameras.yaml, training faces."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic_faces import write_image_folder

    from fervid.sample import make_sample_clip

    work = run.work
    (work / "secrets").mkdir(mode=0o700)
    for name in SECRETS:
        path = work / "secrets" / name
        path.write_text(secrets.token_urlsafe(24) + "@/:%\n")  # URL-hostile characters: the entrypoint encodes them
        path.chmod(0o644)  # read by the containers' own users (fervid 10001, postgres, nobody)
    run.token = (work / "secrets" / "api_token").read_text().strip()
    (work / "models").mkdir()
    (work / "models").chmod(0o777)  # `fervid train` in the image runs as uid 10001
    run.api_port, run.prometheus_port = free_port(), free_port()
    env = {
        "FERVID_IMAGE": run.image,
        "SECRETS_DIR": str(work / "secrets"),
        "MODELS_DIR": str(work / "models"),
        "CAMERAS_FILE": str(work / "cameras.yaml"),
        "CLASSIFIER_CHECKPOINT": f"/models/{RUN_NAME}/best.pt",
        "API_PORT": str(run.api_port),
        "PROMETHEUS_PORT": str(run.prometheus_port),
        "DETECTOR_REPLICAS": "1",  # two cores here
        # Two shared cores: small detector batches, each well within the detector's lease (a batch slower than
        # the lease loses the camera and is redone), and a short frame backlog, so that the pipeline drains
        # within a minute of ingest's stop however slow the detector is (older frames are dropped and counted).
        "DETECTOR_BATCH_SIZE": "2",
        "DETECTOR_LEASE_MS": "60000",
        "FERVID_BUS__FRAME_BACKLOG": "8",
        "CLASSIFIER_REPLICAS": "1",
    }
    (work / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    # A camera's substream: 480x360 at 5 fps (the analysis rate: every frame is analysed). The RTSP server drops
    # packets for a client that falls behind; on two busy cores a larger stream lost slices, and so faces.
    truth = make_sample_clip(work / "clip.mp4", seconds=4.0, fps=5, width=480, height=360, faces=2)
    per_frame = {len(b) for b in truth.boxes}
    if len(per_frame) != 1:
        raise SmokeError(f"the clip's frames have different face counts {per_frame}: no per-frame ground truth")
    write_image_folder(work / "faces", n_train=8, n_test=2)
    for path in (work / "faces").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (work / "faces").chmod(0o755)
    return {"faces_per_frame": per_frame.pop(), "frames": len(truth.boxes)}


_SOURCES = """
import hashlib, importlib.util, json, pathlib
out = {}
for pkg in ("fervid", "ingest", "detector", "classifier", "storage"):
    root = pathlib.Path(importlib.util.find_spec(pkg).submodule_search_locations[0])
    for p in sorted(root.rglob("*.py")):
        out[f"{pkg}/{p.relative_to(root)}"] = hashlib.sha256(p.read_bytes()).hexdigest()
print(json.dumps(out))
"""


def image_is_this_checkout(run: Run) -> int:
    """The image's installed packages are this checkout's sources, file for file (a stale build cache would
    otherwise test yesterday's code)."""
    image = json.loads(
        podman("run", "--rm", "--network", "none", "--entrypoint", "python", f"{run.image}:cuda", "-c", _SOURCES)
    )
    here = json.loads(
        subprocess.run([sys.executable, "-c", _SOURCES], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    )
    differ = sorted(k for k in here.keys() | image.keys() if here.get(k) != image.get(k))
    if differ:
        raise SmokeError(f"the image's code is not this checkout's: {differ[:10]}")
    return len(here)


def train(run: Run) -> str:
    """`fervid train` in the image (as the user would, `docker run ... fervid train`): one epoch of vgg1 on the
    generated faces; the checkpoint lands in MODELS_DIR, which the classifier mounts read-only. Then
    `fervid export` of it to ONNX, in the image too."""
    container = ["run", "--rm", "--network", "none", "-v", f"{run.work / 'faces'}:/faces:ro"]
    container += ["-v", f"{run.work / 'models'}:/models", f"{run.image}:cuda"]
    options = ["--epochs", "1", "--batch-size", "16", "--no-amp", "--num-workers", "0", "--device", "cpu"]
    podman(*container, "train", "--model", "vgg1", "--data", "/faces", "--out", f"/models/{RUN_NAME}", *options)
    best = run.work / "models" / RUN_NAME / "best.pt"
    if not best.is_file():
        raise SmokeError(f"fervid train wrote no {best}")
    # `fervid export` in the runtime image: onnx is a runtime dependency.
    container = ["run", "--rm", "--network", "none", "-v", f"{run.work / 'models'}:/models", f"{run.image}:cuda"]
    podman(*container, "export", f"/models/{RUN_NAME}/best.pt", "--out", f"/models/{RUN_NAME}/model.onnx")
    if not (run.work / "models" / RUN_NAME / "model.onnx").is_file():
        raise SmokeError("fervid export wrote no model.onnx")
    return f"vgg1:{RUN_NAME}/best.pt"  # classifier.serving's model id: <model>:<run dir>/<file>


def start_camera(run: Run) -> subprocess.Popen[bytes]:
    """The clip as a live RTSP camera (GStreamer, looping, real time) on the host, where containers reach it
    as host.containers.internal."""
    port = free_port()
    server = ["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py")]
    proc = subprocess.Popen(
        [*server, "--port", str(port), "--address", "0.0.0.0", "--clip", str(run.work / "clip.mp4"), "--mount", "cam"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY"):
        proc.kill()
        raise SmokeError(f"RTSP server did not start: {line!r}")
    (run.work / "cameras.yaml").write_text(
        f"cameras:\n  - name: {CAMERA}\n    url: rtsp://host.containers.internal:{port}/cam\n    fps: 5\n"
    )
    return proc


# -- the stack ----------------------------------------------------------------------------------------------


def healthy(run: Run, service: str, timeout: float = 300.0, record: bool = True) -> None:
    """Run the service's own healthcheck until it passes; record seconds from the container's start."""
    name = run.container(service)
    started_at = json.loads(podman("inspect", name))[0]["State"]["StartedAt"]
    started = datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", started_at)).timestamp()

    def probe() -> bool:
        state = json.loads(podman("inspect", name))[0]["State"]
        if not state["Running"]:
            raise Fatal(f"{service} exited ({state['ExitCode']}) before healthy:\n{container_logs(name)[-3000:]}")
        return subprocess.run(["podman", "healthcheck", "run", name], capture_output=True).returncode == 0

    try:
        wait(f"{service} healthy", probe, timeout, interval=1.0)
    except SmokeError:
        if record:
            run.health[service] = ("no", None)
        print(container_logs(name)[-3000:], file=sys.stderr)
        raise
    if record:
        run.health[service] = ("yes", time.time() - started)
    run.log(f"{service}: healthy {time.time() - started:.1f} s after its container started")


def bring_up(run: Run) -> None:
    for stage in STAGES:
        t = time.monotonic()
        run.compose("up", "-d", "--no-build", "--no-deps", *stage)
        for service in stage:
            if service == "migrate":  # one-shot: it must exit 0
                name = run.container(service)
                code = podman("wait", name).strip()
                if code != "0":
                    raise SmokeError(f"migrate exited {code}:\n{container_logs(name)[-2000:]}")
                run.health[service] = ("exit 0", time.monotonic() - t)
                run.log("migrate: exit 0")
            else:
                healthy(run, service)
        run.phase("up: " + ", ".join(stage), t)


def device_lines(run: Run, checkpoint: str) -> list[str]:
    """Each model stage's start-up line names its device (and the classifier the checkpoint it serves)."""
    lines = []
    for service in ("detector", "classifier"):
        logs = container_logs(run.container(service))
        m = re.search(rf"\b{service}: starting with .*\b{service}\.device=(\S+)", logs)
        if not m:
            raise SmokeError(f"{service} logged no device at start")
        if service == "classifier" and f"classifier.checkpoint={checkpoint}" not in m.group(0):
            raise SmokeError(f"the classifier's start-up line names no checkpoint {checkpoint}: {m.group(0)}")
        lines.append(f"{service}: device {m.group(1)}")
    return lines


# -- checks -------------------------------------------------------------------------------------------------


def checkpoint_errors(run: Run) -> list[str]:
    """A CLASSIFIER_CHECKPOINT that is missing, or not a fervid checkpoint, stops the classifier at start with
    one line naming the path (run in the classifier's container, through the image's entrypoint)."""
    lines = []
    classify = ["podman", "exec", run.container("classifier"), "fervid-entrypoint", "fervid", "classify"]
    for path in ("/models/no-such-run/best.pt", f"/models/{RUN_NAME}/config.json"):
        out = subprocess.run(
            [*classify, "--checkpoint", path, "--metrics-port", "0"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        # The error is the last thing printed, after the start-up line (rich may wrap it: joined here).
        message = " ".join(out.stderr[out.stderr.rfind("error:") :].split())
        if out.returncode == 0 or path not in message or "Traceback" in out.stderr:
            raise SmokeError(f"classify --checkpoint {path}: exit {out.returncode}, {out.stderr[-800:]!r}")
        lines.append(message)
    return lines


def prometheus_checks(run: Run) -> list[tuple[str, int]]:
    """Every target up (each worker's /metrics and the API's), then every operations-dashboard query returns a
    series (rate windows need two scrapes of data)."""
    from storage.grafana import expand_promql, promql_queries

    base = f"http://127.0.0.1:{run.prometheus_port}/api/v1"
    want = {"ingest", "detector", "classifier", "storage", "api", "redis", "postgres"}

    def targets_up() -> bool:
        active = http_json(f"{base}/targets")["data"]["activeTargets"]
        down = [
            f"{t['labels'].get('service', t['labels']['job'])}: {t['lastError'] or t['health']}"
            for t in active
            if t["health"] != "up"
        ]
        services = {t["labels"].get("service") for t in active}
        if down or not want <= services:
            raise SmokeError(f"down: {down}; missing: {sorted(want - services)}")
        return True

    wait("every Prometheus target up", targets_up, 120, interval=3)
    results = []

    def query_all() -> bool:
        results.clear()
        empty = []
        for _, title, expr in promql_queries():
            q = expand_promql(expr, rate_interval="1m", cameras=[CAMERA])
            series = prometheus_query(run, q, title)
            results.append((q, len(series)))
            if not series:
                empty.append(q)
        if empty:
            raise SmokeError(f"no series for {empty}")
        return True

    wait("every operations query to return a series", query_all, 150, interval=5)
    return results


def prometheus_query(run: Run, query: str, what: str = "") -> list[dict[str, Any]]:
    """An instant query's series; a query Prometheus rejects is fatal (waiting cannot fix it)."""
    url = f"http://127.0.0.1:{run.prometheus_port}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        data = http_json(url)
    except urllib.error.HTTPError as exc:
        raise Fatal(f"{what or query}: Prometheus rejects {query}: {exc.read().decode()[:300]}") from None
    if data["status"] != "success":
        raise Fatal(f"{what or query}: {data}")
    return data["data"]["result"]


def restart_counted(run: Run) -> str:
    """The "Worker restarts" panel counts a real restart: the storage container restarted (a new process; with
    podman usually at a new address, so a new series) is one restart for storage and none for the model
    stages, which ran throughout. The plain `changes()` of the start time, which misses a restart at a new
    address, is logged beside it."""
    from storage.grafana import promql_queries

    (expr,) = [e for _, title, e in promql_queries() if title.startswith("Worker restarts")]
    name = run.container("storage")

    def address() -> str:
        return podman("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name).strip()

    before = address()
    podman("restart", "-t", "15", name)
    healthy(run, "storage", record=False)
    after = address()

    def by_service(query: str) -> dict[str, float]:
        return {r["metric"].get("service", ""): float(r["value"][1]) for r in prometheus_query(run, query)}

    def counted() -> dict[str, float]:
        got = by_service(expr)
        if got.get("storage") != 1 or got.get("detector") or got.get("classifier"):
            raise SmokeError(f"restarts by service: {got}")
        return got

    got = wait("the restart on the Worker restarts panel", counted, 150, interval=5)
    naive = by_service('sum by (service) (changes(process_start_time_seconds{job="fervid"}[1h]))')
    return f"storage restarted (address {before} -> {after}): restarts panel {got}; plain changes() {naive}"


def bus_series(run: Run) -> list[tuple[str, dict[str, str], float]]:
    """The bus's series read fresh from the storage service's /metrics (the one process exporting them)."""
    from prometheus_client.parser import text_string_to_metric_families

    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9070/metrics').read().decode())"
    text = podman("exec", run.container("storage"), "python", "-c", script)
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def camera_counters(run: Run) -> tuple[int, int]:
    """Frames ingest published and dropped (the detector fell behind) for the camera."""
    values = {n: int(v) for n, labels, v in bus_series(run) if labels.get("camera") == CAMERA}
    try:
        return values["fervid_camera_frames_published_total"], values["fervid_camera_frames_dropped_total"]
    except KeyError:
        raise SmokeError(f"storage's /metrics lacks the camera's published/dropped counters: {values}") from None


def bus_drained(run: Run) -> bool:
    """Nothing left to read or acked-to-be in any stream: every frame went through to the database."""
    left = [(n, labels, v) for n, labels, v in bus_series(run) if n in BACKLOG_SERIES and v]
    if left:
        raise SmokeError(f"still in flight: {left}")
    return True


def timeline_faces(run: Run, since: datetime) -> int:
    params = urllib.parse.urlencode({"since": since.isoformat(), "bucket": "10s"})
    rows = http_json(f"http://127.0.0.1:{run.api_port}/cameras/{CAMERA}/timeline?{params}", run.token)
    return sum(r["faces"] for r in rows)


def api_checks(run: Run, since: datetime, truth: dict[str, Any], model_id: str) -> dict[str, Any]:
    base = f"http://127.0.0.1:{run.api_port}"
    # Open without the token: probes and the API's description.
    for path in ("/health", "/ready", "/openapi.json"):
        urllib.request.urlopen(base + path, timeout=10).read()
    try:
        urllib.request.urlopen(base + "/cameras", timeout=10)
        raise SmokeError("/cameras answered without the bearer token")
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise
    per_frame = truth["faces_per_frame"]
    wait(
        f"{MIN_FRAMES} frames' faces on the timeline",
        lambda: timeline_faces(run, since) >= per_frame * MIN_FRAMES,
        600,
        5,
    )
    t = time.monotonic()
    run.compose("stop", "-t", "15", "ingest")  # SIGTERM: ingest finishes what it holds and exits
    published, dropped = camera_counters(run)
    expected = truth["faces_per_frame"] * (published - dropped)
    run.log(f"ingest stopped: {published} frames published, {dropped} dropped; expecting {expected} faces")
    wait("the pipeline to drain", lambda: bus_drained(run), 300, interval=3)
    faces = timeline_faces(run, since)
    run.phase("drain after ingest stopped", t)
    if abs(faces - expected) > TOLERANCE * expected:
        raise SmokeError(f"timeline holds {faces} faces; the clip's ground truth is {expected} (±{TOLERANCE:.0%})")
    events = http_json(f"{base}/events?camera={CAMERA}&limit=1000", run.token)["events"]
    models = {e["model"] for e in events}
    if models != {model_id}:
        raise SmokeError(f"events classified by {models}, not by the checkpoint trained a moment ago ({model_id})")
    return {"faces": faces, "expected": expected, "published": published, "dropped": dropped, "models": models}


# -- report -------------------------------------------------------------------------------------------------


def rss(run: Run) -> dict[str, str]:
    """Resident memory of each running service: VmRSS summed over the container's processes (host PIDs)."""
    out = {}
    for service in run.health:
        top = subprocess.run(["podman", "top", run.container(service), "hpid"], capture_output=True, text=True)
        kib = 0
        for pid in top.stdout.split()[1:] if top.returncode == 0 else []:
            with suppress(OSError):
                m = re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
                kib += int(m.group(1)) if m else 0
        out[service] = f"{kib / 1024:.0f} MB" if kib else "-"
    return out


def report(run: Run, memory: dict[str, str]) -> None:
    width = max([len("service"), *map(len, run.health)])
    print(f"\n{'service':<{width}} healthy   s to healthy   RSS")
    for service, (state, seconds) in run.health.items():
        shown = "-" if seconds is None else f"{seconds:.1f}"
        print(f"{service:<{width}} {state:<9} {shown:>12}   {memory.get(service, '-')}")
    print("\nphase                                              seconds")
    for name, seconds in run.timings:
        print(f"{name:<50} {seconds:7.1f}")
    print(f"{'total (this script)':<50} {time.monotonic() - run.t0:7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="fervid image name without tag (the :cuda tag is run)")
    parser.add_argument("--project", default="fervid-smoke", help="compose project name (containers, volumes)")
    parser.add_argument("--keep", action="store_true", help="leave the stack and the work directory for debugging")
    args = parser.parse_args()
    # podman's settings for this run (deploy/smoke.sh sets the same): runc, cgroupfs, ulimits within ours.
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy" / "smoke" / "containers.conf"))
    run = Run(Path(tempfile.mkdtemp(prefix="fervid-smoke-")), args.image, args.project)
    camera: subprocess.Popen[bytes] | None = None
    ok = False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        t = time.monotonic()
        truth = prepare(run)
        run.compose("down", "-v", "-t", "5", check=False)  # what an interrupted earlier run left
        run.phase("prepare (secrets, clip, faces)", t)
        run.log(f"the image holds this checkout's code ({image_is_this_checkout(run)} files)")
        t = time.monotonic()
        model_id = train(run)
        run.phase("fervid train (vgg1, 1 epoch) + export in the image", t)
        run.log(f"trained {model_id}")
        camera = start_camera(run)
        since = datetime.now(UTC) - timedelta(minutes=1)
        bring_up(run)
        for line in device_lines(run, f"/models/{RUN_NAME}/best.pt"):
            run.log(f"start-up line: {line}")
        t = time.monotonic()
        for line in checkpoint_errors(run):
            run.log(f"bad checkpoint: {line}")
        run.phase("classifier refuses a missing or foreign checkpoint", t)
        t = time.monotonic()
        queries = prometheus_checks(run)
        run.phase("Prometheus: targets up, operations queries", t)
        for q, n in queries:
            run.log(f"PromQL {n} series: {q}")
        memory = rss(run)  # while everything runs, before ingest is stopped
        t = time.monotonic()
        result = api_checks(run, since, truth, model_id)
        run.phase("timeline through the API (incl. drain)", t)
        run.log(f"timeline: {result['faces']} faces, ground truth {result['expected']}; model {model_id}")
        t = time.monotonic()
        run.log(restart_counted(run))
        run.phase("a storage restart on the Worker restarts panel", t)
        report(run, memory)
        ok = True
    except (SmokeError, subprocess.SubprocessError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        with suppress(Exception):
            report(run, rss(run))
    finally:
        if camera is not None:
            with suppress(ProcessLookupError):
                os.killpg(camera.pid, signal.SIGKILL)
            camera.wait()
        if not args.keep:
            t = time.monotonic()
            run.compose("down", "-v", "-t", "15", check=False)
            run.phase("down -v", t)
            print(f"{'down -v':<50} {run.timings[-1][1]:7.1f}")
            shutil.rmtree(run.work, ignore_errors=True)
        else:
            print(f"kept: project {run.project}, work {run.work}", file=sys.stderr)
    print("smoke: PASSED" if ok else "smoke: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
