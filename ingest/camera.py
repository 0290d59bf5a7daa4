"""One camera, forever: a thread that connects, publishes, and reconnects with backoff when the source drops.

States: ``connecting`` → ``live`` (frames flowing) → on a disconnect, error or stall ``backing_off`` →
``connecting`` ...; ``failed`` for permanent errors (wrong path, wrong credentials, not a video; retried slowly
because a camera can be fixed without restarting ingest); ``stopped`` when asked to stop or at the end of a
non-looping file. A live source whose decode loop simply ends (a killed server closes the socket without an
error) is a disconnect, not an end.

Nothing here ever logs or stores a URL with credentials: every URL goes through ``redact_url`` and every
FFmpeg message through ``redact_text``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from fervid.backoff import Backoff
from fervid.bus import Bus, StopRequested, redact_url
from fervid.errors import SourceError
from fervid.settings import Settings
from ingest.cameras import CameraConfig
from ingest.publisher import CameraCounters, FramePublisher
from ingest.source import PermanentSourceError, Sampler, decode, is_live, open_container, redact_text, source_kind

log = logging.getLogger(__name__)

STATES = ("connecting", "live", "backing_off", "stopped", "failed")
# The state hash expires unless refreshed: a dead ingest process shows as stale, then disappears.
STATE_TTL_S = 30
# Permanent errors (404, 401, not a video) are retried this much more slowly than the backoff cap.
PERMANENT_RETRY_S = 60.0


@dataclass
class CameraStatus:
    name: str
    url: str  # redacted
    kind: str
    state: str = "connecting"
    last_error: str = ""
    reconnects: int = 0
    frames: int = 0  # published by this process
    decoded: int = 0
    drops: int = 0  # oldest frames dropped by the bus because the detector fell behind (this process)
    fps: float = 0.0  # published frames/s, recent
    since: float = 0.0  # unix time of the last state change
    retry_at: float = 0.0  # unix time of the next attempt while backing off / failed
    last_frame_at: float = 0.0


class CameraRunner(threading.Thread):
    def __init__(
        self,
        config: CameraConfig,
        client: redis.Redis,
        settings: Settings,
        *,
        backoff: Backoff | None = None,
        permanent_retry_s: float = PERMANENT_RETRY_S,
    ) -> None:
        super().__init__(name=f"camera-{config.name}", daemon=True)
        self.config = config
        self.client = client
        self.settings = settings
        if config.max_size is not None:
            self.settings = settings.model_copy(
                update={"ingest": settings.ingest.model_copy(update={"max_size": config.max_size})}
            )
        self.backoff = backoff or Backoff(initial=0.5, cap=30.0, stable_after=30.0)
        self.permanent_retry_s = permanent_retry_s
        self.live = is_live(config.url)
        self.status = CameraStatus(config.name, redact_url(config.url), source_kind(config.url), since=time.time())
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._rate_mark = (time.monotonic(), 0)
        self._publisher: FramePublisher | None = None
        self._file_offset = 0.0  # looping files: video seconds already played
        self._file_start = time.time()
        self._last_ts = 0.0

    # -- control -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._halt.set()

    @property
    def stopping(self) -> bool:
        return self._halt.is_set()

    def counters(self) -> CameraCounters:
        """What this runner published (first and last seq, drops), across all its connections."""
        c = self._publisher.counters if self._publisher is not None else CameraCounters()
        with self._lock:
            return replace(c, decoded=self.status.decoded)

    def snapshot(self) -> CameraStatus:
        with self._lock:
            now = time.monotonic()
            t0, n0 = self._rate_mark
            if now - t0 >= 1.0:
                self.status.fps = round((self.status.frames - n0) / (now - t0), 2)
                self._rate_mark = (now, self.status.frames)
            if self.status.state != "live":
                self.status.fps = 0.0
            return CameraStatus(**asdict(self.status))

    def publish_state(self) -> None:
        """Write the state hash (with a TTL, refreshed by every call). Never raises."""
        s = self.snapshot()
        fields: dict[str, Any] = {k: v for k, v in asdict(s).items()}
        fields["updated"] = time.time()
        fields = {k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in fields.items()}
        keys = self.settings.keys
        key = keys.camera(s.name, "state")
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, STATE_TTL_S)
            pipe.sadd(keys.cameras, s.name)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("%s: cannot write camera state to Redis: %s", s.name, redact_text(str(exc)))

    def _set(self, state: str, error: str | None = None, retry_in: float = 0.0) -> None:
        assert state in STATES
        with self._lock:
            changed = state != self.status.state
            self.status.state = state
            if changed:
                self.status.since = time.time()
            if error is not None:
                self.status.last_error = redact_text(error)
            self.status.retry_at = time.time() + retry_in if retry_in else 0.0
        if changed or error:
            self.publish_state()

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self._publisher is not None:
                self._publisher.close()

    def _run(self) -> None:
        name, url = self.config.name, redact_url(self.config.url)
        while not self._halt.is_set():
            self._set("connecting")
            error: str | None = None
            try:
                if self._publisher is None:
                    self._publisher = FramePublisher(
                        Bus.from_settings(self.client, "ingest", self.settings), name, self.settings, live=self.live
                    )
                self._session()
                if self._halt.is_set():
                    break
                if not self.live:
                    if self.config.loop:
                        continue  # start over at once; _session advanced the timestamp offset
                    self._set("stopped", "end of file")
                    log.info("%s: end of %s", name, url)
                    return
                error = "stream ended (the camera closed the connection)"
            except StopRequested:
                break
            except PermanentSourceError as exc:
                self.backoff.mark_down()
                with self._lock:
                    self.status.reconnects += 1
                log.error("%s: %s; retrying in %.0fs", name, exc, self.permanent_retry_s)
                self._set("failed", str(exc), retry_in=self.permanent_retry_s)
                self._halt.wait(self.permanent_retry_s)
                continue
            except SourceError as exc:
                error = str(exc)
            except redis.RedisError as exc:
                error = f"Redis: {exc}"
            except Exception as exc:
                log.exception("%s: unexpected error", name)
                error = f"{type(exc).__name__}: {exc}"
            self.backoff.mark_down()
            delay = self.backoff.next_delay()
            with self._lock:
                self.status.reconnects += 1  # counts every retry scheduled after a failure or disconnect
            log.warning("%s: %s; reconnecting in %.1fs", name, redact_text(error or ""), delay)
            self._set("backing_off", error, retry_in=delay)
            self._halt.wait(delay)
        self._set("stopped")

    def _session(self) -> None:
        """One connection: open, decode, sample, publish until the source ends, errors or stops."""
        cfg = self.config
        publisher = self._publisher
        assert publisher is not None
        container = open_container(
            cfg.url,
            timeout_s=cfg.open_timeout,
            read_timeout_s=cfg.read_timeout,
            transport=cfg.transport,
            decoder_threads=cfg.decoder_threads,
            hwaccel=cfg.hwaccel,
            tls_verify=cfg.tls_verify,
            tls_ca_file=cfg.tls_ca_file,
        )
        sampler = Sampler(cfg.fps)
        anchor: float | None = None
        last_pts = 0.0
        try:
            with container:
                for frame in decode(container, cfg.url, stall_s=cfg.stall_timeout):
                    if self._halt.is_set():
                        return
                    if anchor is None:
                        # Live: wall clock at connect + PTS since connect. Files: start of the run + PTS (+ loops).
                        anchor = time.time() - frame.pts if self.live else self._file_start + self._file_offset
                        self.backoff.mark_up()
                        self._set("live")
                    last_pts = frame.pts
                    with self._lock:
                        self.status.decoded += 1
                    if not sampler.keep(frame.pts):
                        continue
                    ts = anchor + frame.pts
                    if self.live:
                        ts = max(ts, self._last_ts + 1e-3)  # never go back in time across reconnects
                    self._last_ts = ts
                    publisher.publish(frame.raw, ts, should_stop=self._halt.is_set)  # encodes while we decode on
                    self._sync_counters(publisher)
        finally:
            try:
                publisher.flush()  # the frame in flight; its error (Redis, stop) ends the session too
            finally:
                self._sync_counters(publisher)
        if not self.live and anchor is not None:
            self._file_offset += last_pts + 1.0 / float(cfg.fps or 30)

    def _sync_counters(self, publisher: FramePublisher) -> None:
        c = publisher.counters  # frames this runner published; lags the frame in flight by one
        with self._lock:
            if c.published != self.status.frames:
                self.status.last_frame_at = time.time()
            self.status.frames, self.status.drops = c.published, c.dropped
