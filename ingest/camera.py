"""One camera, forever: a thread that connects, publishes, and reconnects when the source drops.

States: ``connecting`` → ``live`` (frames flowing) → on a disconnect, error or stall ``backing_off`` →
``connecting`` ...; ``failed`` for permanent errors (wrong path, wrong credentials, not a video; retried slowly
because a camera can be fixed without restarting ingest); ``stopped`` when asked to stop or at the end of a
non-looping file. A live source whose decode loop simply ends (a killed server closes the socket without an
error) is a disconnect, not an end.

Reconnecting is fast and gentle at once. Between full opens (RTSP/TLS handshake, stream probing) a cheap probe
runs every half second (the source type's: a TCP connect for RTSP, the device or the file existing). A source
the probe finds back after it was unreachable is opened at once, so a camera is live again within a second or
two of its return however often it flaps. Otherwise full opens follow a jittered exponential backoff (0.5 s
doubling to 30 s; a connection live for :data:`STABLE_AFTER_S` starts it over), and a camera that stays
unreachable, or has failed for 30 s straight, is fully opened at most once per 30 s.

The camera's state is a Redis hash that expires unless refreshed: whoever runs the runner calls
:meth:`CameraRunner.publish_state` every :data:`HEARTBEAT_S`. It names the process that owns the camera; a
process stopping a camera that another has taken over leaves that one's state alone, and the camera of a
process that is gone expires and shows as ``unknown``.

Nothing here ever logs or stores a URL with credentials: every URL goes through ``redact_url`` and every
FFmpeg message through ``redact_text``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
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
from ingest.frames import CaptureClock, Reading, iso, recording_start, sampled
from ingest.publisher import CameraCounters, FramePublisher
from ingest.source import PermanentSourceError, open_container, redact_text, source_type

log = logging.getLogger(__name__)

STATES = ("connecting", "live", "backing_off", "stopped", "failed")
HEARTBEAT_S = 1.0  # how often the running process refreshes every camera's state
STATE_TTL_S = 10.0  # a state not refreshed this long expires: its process is gone (or hung)
# Permanent errors (404, 401, not a video) are retried this much more slowly than the backoff cap.
PERMANENT_RETRY_S = 60.0
PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 1.0
# A connection live this long was a real recovery (the backoff starts over); one that drops sooner may be a
# camera in a crash loop, which backs off further. Seconds, not the minute a crash loop would need to show.
STABLE_AFTER_S = 5.0

# Write a camera's state with its owner and a TTL. A "stopped" state is written only by the camera's owner (or
# when it has none), so a process stopping a camera never hides another process that now runs it.
# KEYS: state hash, cameras set.  ARGV: ttl ms, owner, only-if-owner ('0'|'1'), camera, field, value, ...
_STATE_LUA = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if ARGV[3] == '1' and owner and owner ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""


def process_owner() -> str:
    """This ingest process, as named in the states of the cameras it runs."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class CameraStatus:
    name: str
    url: str  # redacted
    kind: str
    state: str = "connecting"
    last_error: str = ""
    reconnects: int = 0
    opens: int = 0  # full opens (connect, handshake, stream probing), successful or not
    frames: int = 0  # published by this process
    decoded: int = 0
    drops: int = 0  # oldest frames dropped by the bus because the detector fell behind (this process)
    offline_drops: int = 0  # frames dropped while Redis was unreachable (this process)
    fps: float = 0.0  # published frames/s, recent
    since: float = 0.0  # unix time of the last state change
    retry_at: float = 0.0  # unix time of the next attempt while backing off / failed
    last_frame_at: float = 0.0


class CameraRunner(threading.Thread):
    """Runs one camera until stopped (or a non-looping file's end).

    `fail_fast` (one-shot runs: `fervid demo`, `fervid ingest-files`): an error that retrying cannot fix in the
    caller's time ends the runner, in :attr:`error`, instead of being retried: any error of a file, and a live
    source's permanent error (wrong path, wrong credentials) before it was ever live. `seconds`: files stop
    after this much video.
    """

    def __init__(
        self,
        config: CameraConfig,
        client: redis.Redis,
        settings: Settings,
        *,
        backoff: Backoff | None = None,
        permanent_retry_s: float = PERMANENT_RETRY_S,
        probe_every_s: float = PROBE_EVERY_S,
        fail_fast: bool = False,
        seconds: float | None = None,
        owner: str | None = None,
    ) -> None:
        super().__init__(name=f"camera-{config.name}", daemon=True)
        self.config = config
        self.client = client
        self.settings = settings
        if config.max_size is not None:
            self.settings = settings.model_copy(
                update={"ingest": settings.ingest.model_copy(update={"max_size": config.max_size})}
            )
        self.backoff = backoff or Backoff(initial=0.5, cap=30.0, stable_after=STABLE_AFTER_S)
        self.permanent_retry_s = permanent_retry_s
        self.probe_every_s = probe_every_s
        self.fail_fast = fail_fast
        self.seconds = seconds
        self.owner = owner or process_owner()
        self.source = source_type(config.url)
        self.live = self.source.live
        self.error: SourceError | None = None  # what ended a fail_fast runner
        self.status = CameraStatus(config.name, redact_url(config.url), self.source.kind, since=time.time())
        self.clock = CaptureClock(self.live, config.start_time.timestamp() if config.start_time else None)
        self._run_start = time.time()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._rate_mark = (time.monotonic(), 0)
        self._publisher: FramePublisher | None = None
        self._decoded_before = 0  # by earlier connections
        self._ever_live = False
        self._last_open = -math.inf  # monotonic time of the last full open
        self._failing_since: float | None = None  # monotonic; None while live
        self._start_known = False  # files: the recording start has been settled (and logged)
        self._write_state = client.register_script(_STATE_LUA)
        self._state_failing = False

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
        """Write the state hash, owned by this process, with a TTL (the heartbeat; see the module doc). Never
        raises: a Redis outage is logged once, when it starts."""
        s = self.snapshot()
        fields: dict[str, Any] = {**asdict(s), "updated": time.time()}
        flat = [str(x) for k, v in fields.items() for x in (k, f"{v:.3f}" if isinstance(v, float) else v)]
        keys = self.settings.keys
        args: list[str | int] = [int(STATE_TTL_S * 1000), self.owner, int(s.state == "stopped"), s.name, *flat]
        try:
            self._write_state(keys=[keys.camera(s.name, "state"), keys.cameras], args=args)
        except redis.RedisError as exc:
            if not self._state_failing:
                log.warning("%s: cannot write camera state to Redis: %s", s.name, redact_text(str(exc)))
            self._state_failing = True
        else:
            self._state_failing = False

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
                        continue  # start over at once; the clock carries on after this pass
                    self._set("stopped", "end of file")
                    log.info("%s: end of %s", name, url)
                    return
                error = "stream ended (the camera closed the connection)"
            except StopRequested:
                break
            except SourceError as exc:
                if self.fail_fast and (
                    not self.live or (isinstance(exc, PermanentSourceError) and not self._ever_live)
                ):
                    self.error = exc
                    self._set("failed", str(exc))
                    return
                if isinstance(exc, PermanentSourceError):
                    self._retry_permanent(exc)
                    continue
                error = str(exc)
            except redis.RedisError as exc:
                error = f"Redis: {exc}"
            except Exception as exc:
                log.exception("%s: unexpected error", name)
                error = f"{type(exc).__name__}: {exc}"
            self._retry(error)
        self._set("stopped")

    def _session(self) -> None:
        """One connection: open, then decode → sample → publish until the source ends, errors or stops."""
        cfg = self.config
        publisher = self._publisher
        assert publisher is not None
        self._last_open = time.monotonic()
        with self._lock:
            self.status.opens += 1
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
        reading = Reading()
        finished = False
        try:
            with container:
                if not self.live and not self._start_known:
                    self._settle_recording_start(container)
                frames = sampled(
                    container, cfg.url, fps=cfg.fps, seconds=self.seconds, stall_s=cfg.stall_timeout, reading=reading
                )
                connected = False
                for frame in frames:
                    if self._halt.is_set():
                        return
                    if not connected:
                        connected = True
                        self._went_live()
                    ts = self.clock.stamp(frame.pts)
                    last = publisher.counters.last_ts
                    if not self.live and last is not None and ts <= last:
                        continue  # a file read again after a failure goes on after the last frame it published
                    publisher.publish(frame.raw, ts, should_stop=self._halt.is_set)
                    self._sync_counters(publisher, reading)  # while the frame is encoded on a helper thread
            finished = True
        finally:
            try:
                publisher.flush()  # the frame in flight; its error (a stop) ends the session too
            finally:
                self._sync_counters(publisher, reading)
                self._decoded_before += reading.decoded
                if self.live or finished:  # a file that failed is read again with the same times
                    self.clock.end_pass(reading.last_pts, 1.0 / float(cfg.fps or 30))

    def _settle_recording_start(self, container: Any) -> None:
        """A file's capture time is its recording start + PTS: start_time when configured, else the file's
        creation_time tag, else when this runner started. Logged once, saying which."""
        if self.clock.start is not None:
            how = "the start time given"
        elif (tag := recording_start(container)) is not None:
            self.clock.start, how = tag, "the file's creation_time tag"
        else:
            self.clock.start, how = self._run_start, "the start of this run (the file has no creation_time tag)"
        self._start_known = True
        log.info("%s: capture time = %s + PTS, from %s", self.config.name, iso(self.clock.start), how)

    def _went_live(self) -> None:
        self._ever_live = True
        self._failing_since = None
        self.backoff.mark_up()
        self._set("live")

    def _retry(self, error: str) -> None:
        """After a failure or a disconnect: back off, then wait for the source (see :meth:`_wait_to_reopen`)."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self.backoff.mark_down()
        delay = self.backoff.next_delay()
        with self._lock:
            self.status.reconnects += 1  # counts every retry scheduled after a failure or disconnect
        log.warning(
            "%s: %s; reconnecting in %.1fs, or as soon as it answers again", self.config.name, redact_text(error), delay
        )
        self._set("backing_off", error, retry_in=delay)
        self._wait_to_reopen(delay)

    def _wait_to_reopen(self, delay: float) -> None:
        """Probe the source every `probe_every_s` until the next full open is due.

        Due at once when a probe reaches the source after one that could not (it has come back); otherwise
        after `delay`, the backoff; but while the source is unreachable, or once it has failed for the backoff's
        cap straight, no sooner than a cap after the previous full open.
        """
        cap = self.backoff.cap
        due = time.monotonic() + delay
        unreachable = False
        while not self._halt.is_set():
            problem = self.source.probe(self.config.url, min(PROBE_TIMEOUT_S, self.config.open_timeout))
            now = time.monotonic()
            if not problem and unreachable:
                log.info("%s: %s answers again; reconnecting now", self.config.name, self.status.url)
                self.backoff.reset()
                self._failing_since = now
                return
            unreachable = bool(problem)
            gentle = unreachable or now - (self._failing_since or now) >= cap
            if now >= due and (not gentle or now - self._last_open >= cap):
                return
            self._halt.wait(self.probe_every_s)

    def _retry_permanent(self, exc: PermanentSourceError) -> None:
        self.backoff.mark_down()
        with self._lock:
            self.status.reconnects += 1
        log.error("%s: %s; retrying in %.0fs", self.config.name, exc, self.permanent_retry_s)
        self._set("failed", str(exc), retry_in=self.permanent_retry_s)
        self._halt.wait(self.permanent_retry_s)

    def _sync_counters(self, publisher: FramePublisher, reading: Reading) -> None:
        c = publisher.counters  # frames this runner published; lags the frame in flight by one
        with self._lock:
            if c.published != self.status.frames:
                self.status.last_frame_at = time.time()
            self.status.frames, self.status.drops, self.status.offline_drops = c.published, c.dropped, c.offline_drops
            self.status.decoded = self._decoded_before + reading.decoded
