"""Prometheus metrics and the per-process health server: the one home of every metric fervid exports.

Every worker process serves ``/metrics`` (Prometheus text), ``/health`` (the process is alive: 200) and
``/ready`` (Redis reachable and the model loaded: 200, else 503 with the reasons) on ``--metrics-port``
(``FERVID_METRICS_PORT``; 0 = no server).

Three kinds of metrics:

* the worker loop's, per stage (:func:`fervid.worker.run_stage` records them for every stage alike);
* per camera, where a stage already knows the camera of each frame (frames, faces, fps, inference time);
* the bus's, read from Redis at scrape time by :class:`BusCollector` (stream lengths, backlog/lag, pending
  entries, dead letters, frames published and dropped per camera), so no counter has to survive a restart.
  They describe shared state, not the process, so exactly one process exports them: the storage service
  (``serve_stage(..., bus_metrics=True)``). A ``sum()`` over them counts each stream and camera once.

Names follow Prometheus' conventions: counters end in ``_total``, other series name their unit
(``_seconds``, ``_entries``, ``_images``, ``_messages``, ``_per_second``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fervid.bus import as_text
from fervid.contracts import CLASSIFIER_GROUP, DETECTOR_GROUP, STORAGE_GROUP, Keys

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- the worker loop, per stage ------------------------------------------------------------------------------
STAGE_MESSAGES = Counter(
    "fervid_stage_messages", "Messages handled by the stage's worker loop (acked or dead-lettered).", ["stage"]
)
STAGE_DEAD_LETTERS = Counter(
    "fervid_stage_dead_letters", "Messages this process sent to the dead-letter stream.", ["stage"]
)
STAGE_BATCH_FAILURES = Counter(
    "fervid_stage_batch_failures", "Batches that failed as a whole (left pending, retried).", ["stage"]
)
STAGE_BATCH_SIZE = Histogram(
    "fervid_stage_batch_messages", "Messages per batch read by the worker loop.", ["stage"], buckets=_BATCH_BUCKETS
)
STAGE_HANDLE_SECONDS = Histogram(
    "fervid_stage_handle_seconds",
    "Seconds to decode, handle and publish one batch.",
    ["stage"],
    buckets=_SECONDS_BUCKETS,
)

# -- per camera, where the stages count ---------------------------------------------------------------------
CAMERA_FRAMES = Counter("fervid_camera_frames", "Frames processed, per camera and stage.", ["camera", "stage"])
CAMERA_FACES = Counter(
    "fervid_camera_faces", "Faces found (detector) or classified (classifier), per camera.", ["camera", "stage"]
)
CAMERA_FPS = Gauge(
    "fervid_camera_frames_per_second",
    "Frames processed per second over the last 10 s, per camera and stage.",
    ["camera", "stage"],
)
CAMERA_SKIPPED = Counter(
    "fervid_camera_frames_skipped", "Frames a stage could not process (dead-lettered), per camera.", ["camera", "stage"]
)
INFERENCE_SECONDS = Histogram(
    "fervid_inference_seconds",
    "Seconds per model forward pass (one batch).",
    ["stage", "model"],
    buckets=_SECONDS_BUCKETS,
)
INFERENCE_BATCH = Histogram(
    "fervid_inference_batch_images", "Images per model forward pass.", ["stage", "model"], buckets=_BATCH_BUCKETS
)
# A batch mixes cameras: per camera, the batches that carried its frames (how long, how big) and its faces per frame.
CAMERA_INFERENCE_SECONDS = Histogram(
    "fervid_camera_inference_seconds",
    "Seconds per forward pass, of the batches carrying this camera's frames.",
    ["camera", "stage"],
    buckets=_SECONDS_BUCKETS,
)
CAMERA_BATCH = Histogram(
    "fervid_camera_batch_images",
    "Images per forward pass, of the batches carrying this camera's frames.",
    ["camera", "stage"],
    buckets=_BATCH_BUCKETS,
)
CAMERA_FACES_PER_FRAME = Histogram(
    "fervid_camera_faces_per_frame",
    "Faces per frame, per camera.",
    ["camera", "stage"],
    buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32),
)

# -- process -----------------------------------------------------------------------------------------------
READY = Gauge("fervid_ready", "1 when the process is ready (Redis reachable, model loaded).", ["service"])


class FpsMeter:
    """Frames per second per (camera, stage) over a sliding window, exported as ``fervid_camera_frames_per_second``."""

    def __init__(self, stage: str, window_s: float = 10.0) -> None:
        self.stage = stage
        self.window_s = window_s
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._totals: dict[str, int] = {}  # frames in each camera's window, kept as it slides (no sum per frame)
        self._lock = threading.Lock()

    def add(self, camera: str, frames: int = 1, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events.setdefault(camera, deque())
            q.append((now, frames))
            total = self._totals.get(camera, 0) + frames
            while q and now - q[0][0] > self.window_s:
                total -= q.popleft()[1]
            self._totals[camera] = total
            span = max(now - q[0][0], 1.0) if len(q) > 1 else self.window_s
            fps = total / span
        CAMERA_FPS.labels(camera, self.stage).set(fps)
        CAMERA_FRAMES.labels(camera, self.stage).inc(frames)
        return fps


class BusCollector:
    """Reads the bus's state from Redis at scrape time. Errors become ``fervid_bus_up 0``, never a 500.

    Dead letters are exported for every consuming group and frames for every known camera even when zero, so
    a dashboard's query has a series (0) before anything went wrong.
    """

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        # Entries after the group's last-delivered id, counted inside Redis (no entry crosses the network). A
        # stream holds at most its backlog cap of them (the publisher drops or waits beyond it).
        self._undelivered = client.register_script("return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+')")

    def collect(self) -> Iterable[Metric]:
        keys = self.keys

        up = GaugeMetricFamily("fervid_bus_up", "1 when Redis answered this scrape.")
        length = GaugeMetricFamily("fervid_stream_entries", "Entries in the stream (XLEN).", labels=["stream"])
        backlog = GaugeMetricFamily(
            "fervid_stream_lag_entries", "Entries the group has not read yet (undelivered).", labels=["stream", "group"]
        )
        pending = GaugeMetricFamily(
            "fervid_stream_pending_entries", "Entries delivered to the group but not acked.", labels=["stream", "group"]
        )
        consumers = GaugeMetricFamily(
            "fervid_stream_consumers", "Consumers registered in the group.", labels=["stream", "group"]
        )
        dead = CounterMetricFamily(
            "fervid_dead_letters", "Messages dead-lettered so far, per consuming group.", labels=["group"]
        )
        published = CounterMetricFamily(
            "fervid_camera_frames_published", "Frames ingest published, per camera.", labels=["camera"]
        )
        dropped = CounterMetricFamily(
            "fervid_camera_frames_dropped", "Frames dropped because the detector fell behind.", labels=["camera"]
        )
        try:
            cameras = sorted(c.decode() for c in self.client.smembers(keys.cameras))
            for stream, group in keys.stage_streams(cameras):
                length.add_metric([stream], int(self.client.xlen(stream)))
                for g in self._groups(stream):
                    if as_text(g["name"]) != group:
                        continue
                    # Counted, not Redis 7's `lag` field: that is entries-added minus entries-read, which overcounts
                    # by every undelivered entry the publisher dropped (XDEL) when a live stream was full.
                    lag = self._undelivered(keys=[stream], args=[as_text(g["last-delivered-id"])])
                    backlog.add_metric([stream, group], int(lag))
                    pending.add_metric([stream, group], int(g["pending"]))
                    consumers.add_metric([stream, group], int(g["consumers"]))
            counts = {DETECTOR_GROUP: 0, CLASSIFIER_GROUP: 0, STORAGE_GROUP: 0}
            counts |= {as_text(g): int(n) for g, n in self.client.hgetall(keys.dead_counts).items()}
            for group, n in sorted(counts.items()):
                dead.add_metric([group], n)
            for camera in cameras:
                stats = self.client.hgetall(keys.camera(camera, "stats"))
                published.add_metric([camera], int(stats.get(b"published", 0)))
                dropped.add_metric([camera], int(stats.get(b"dropped", 0)))
            up.add_metric([], 1)
        except Exception as exc:
            log.debug("bus metrics unavailable: %s", exc)
            up.add_metric([], 0)
            return [up]
        return [up, length, backlog, pending, consumers, dead, published, dropped]

    def _groups(self, stream: str) -> list[dict[str, Any]]:
        try:
            return [{as_text(k): v for k, v in g.items()} for g in self.client.xinfo_groups(stream)]
        except Exception:
            return []


Check = Callable[[], str | None]  # None when fine, else the reason for not being ready


class HealthServer:
    """``/metrics``, ``/health`` and ``/ready`` on a daemon thread. ``port=0`` starts nothing."""

    def __init__(self, service: str, port: int, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
        self.service = service
        self.port = port
        self.host = host
        self.registry = registry
        self.checks: list[tuple[str, Check]] = []
        self._server: ThreadingHTTPServer | None = None

    def add_check(self, name: str, check: Check) -> None:
        self.checks.append((name, check))

    def readiness(self) -> list[str]:
        problems = []
        for name, check in self.checks:
            try:
                reason = check()
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if reason:
                problems.append(f"{name}: {reason}")
        READY.labels(self.service).set(0 if problems else 1)
        return problems

    def start(self) -> HealthServer:
        if not self.port:
            return self
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    owner.readiness()
                    self._send(200, generate_latest(owner.registry), CONTENT_TYPE_LATEST)
                elif path == "/health":
                    self._send(200, b"ok\n")
                elif path == "/ready":
                    problems = owner.readiness()
                    self._send(503 if problems else 200, ("\n".join(problems) or "ready").encode() + b"\n")
                else:
                    self._send(404, b"not found: try /metrics, /health or /ready\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics: " + fmt, *args)

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            from fervid.errors import ConfigError

            raise ConfigError(f"cannot serve metrics on port {self.port}: {exc}") from exc
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        log.info("%s: metrics on http://%s:%d/metrics", self.service, self.host, self.port)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def register_bus_collector(client: Any, keys: Keys, registry: CollectorRegistry = REGISTRY) -> BusCollector:
    collector = BusCollector(client, keys)
    registry.register(collector)
    return collector


def serve_health(
    service: str,
    port: int,
    client: Any,
    keys: Keys,
    checks: dict[str, Check] | None = None,
    *,
    bus_metrics: bool = False,
) -> HealthServer:
    """The one setup of every bus process: a Redis readiness check (plus `checks`, e.g. "model loaded"), the server
    started; the bus collector only in the one process that exports the bus's series (`bus_metrics`: storage).
    ``/health`` answers from here on; ``/ready`` once every check passes."""
    health = HealthServer(service, port)
    health.add_check("redis", lambda: None if client.ping() else "no PONG")
    for name, check in (checks or {}).items():
        health.add_check(name, check)
    if bus_metrics:
        register_bus_collector(client, keys)
    return health.start()
