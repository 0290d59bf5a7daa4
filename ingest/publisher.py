"""Turning decoded frames of one camera into FrameMsg entries on its frame stream."""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import av
import numpy as np
import redis

from fervid.bus import Bus, Published, StopRequested
from fervid.contracts import DETECTOR_GROUP, FrameMsg, FrameRef
from fervid.settings import Settings
from ingest.jpeg import encode_bgr, encode_frame

log = logging.getLogger(__name__)


@dataclass
class CameraCounters:
    decoded: int = 0
    published: int = 0
    dropped: int = 0  # oldest frames dropped from the stream because the detector fell behind (live only)
    offline_drops: int = 0  # frames dropped because Redis was unreachable (live only: files wait for it)
    first_seq: int | None = None
    last_seq: int | None = None
    last_ts: float | None = None  # capture time of the last frame published


class FramePublisher:
    """Resizes, JPEG-encodes and publishes frames of one camera with a per-camera monotonic sequence number.

    The sequence continues from the last one stored in Redis (written atomically with each entry), so it stays
    monotonic across reconnects and ingest restarts, which keeps (camera, seq) a unique key downstream.

    With ``threads`` > 0 (default 2), frames are encoded and published on helper threads while the caller
    decodes the next ones (libjpeg-turbo, FFmpeg and socket I/O release the GIL); frames still reach the stream
    in order, each as soon as it is encoded. At most ``threads`` frames are in flight; an error of one is raised
    by a later :meth:`publish` or by :meth:`flush`. Call :meth:`close` when done.

    A Redis outage of any length is ridden out: a file waits and sends the same frame again when Redis is back;
    a live camera drops frames meanwhile (counted in ``offline_drops``) and the decoder never waits.
    """

    def __init__(self, bus: Bus, camera: str, settings: Settings, *, live: bool, threads: int = 2) -> None:
        self.bus = bus
        self.camera = camera
        self.live = live
        self.stream = bus.keys.frames(camera)
        self.stats_key = bus.keys.camera(camera, "stats")
        self.max_size = settings.ingest.max_size
        self.quality = settings.ingest.jpeg_quality
        self.backlog = settings.bus.frame_backlog
        self.counters = CameraCounters()
        last = bus.redis.hget(self.stats_key, "last_seq")
        self._next_seq = int(last) + 1 if last is not None else 0
        bus.ensure_group(self.stream, DETECTOR_GROUP)
        bus.redis.sadd(bus.keys.cameras, camera)
        self._pool = _OrderedPool(threads, f"jpeg-{camera}") if threads > 0 else None
        self._in_flight: deque[Future[None]] = deque()
        self._outage = _Outage()

    def publish(
        self, frame: av.VideoFrame | np.ndarray, capture_ts: float, should_stop: Callable[[], bool] | None = None
    ) -> None:
        """Publish a decoded frame (or a BGR image). Raises the error of an earlier frame, if one failed."""
        stop = should_stop or (lambda: False)
        if self._pool is None:
            self._send(self._encode(frame), capture_ts, stop)
            return
        while self._in_flight and (self._in_flight[0].done() or len(self._in_flight) >= self._pool.size):
            self._in_flight.popleft().result()
        self._in_flight.append(
            self._pool.submit(lambda: self._encode(frame), lambda jpeg: self._send(jpeg, capture_ts, stop))
        )

    def flush(self) -> None:
        """Wait for the frames in flight; raise the first error."""
        while self._in_flight:
            self._in_flight.popleft().result()

    def close(self) -> None:
        """Stop the helper threads (frames in flight are finished first; their errors are not raised)."""
        self._in_flight.clear()
        if self._pool is not None:
            self._pool.close()

    def _encode(self, frame: av.VideoFrame | np.ndarray) -> tuple[bytes, int, int]:
        if isinstance(frame, np.ndarray):
            return encode_bgr(frame, self.max_size, self.quality)
        return encode_frame(frame, self.max_size, self.quality)

    def _send(self, encoded: tuple[bytes, int, int], capture_ts: float, should_stop: Callable[[], bool]) -> None:
        jpeg, w, h = encoded
        seq = self._next_seq
        msg = FrameMsg(FrameRef(self.camera, seq, capture_ts, w, h), jpeg, live=self.live)
        result = self._append(msg, seq, should_stop)
        c = self.counters
        if result is None:
            c.offline_drops += 1
            return
        self._next_seq = seq + 1
        c.published += 1
        c.dropped += result.dropped
        c.first_seq = seq if c.first_seq is None else c.first_seq
        c.last_seq = seq
        c.last_ts = capture_ts

    def _append(self, msg: FrameMsg, seq: int, should_stop: Callable[[], bool]) -> Published | None:
        """Publish `msg` through a Redis outage: a file's frame waits and goes again, with the same sequence number
        (had it reached Redis before the connection broke, storage's idempotent insert absorbs the copy); a live
        frame is dropped (None), its number skipped, and a later frame tries again."""
        outage = self._outage
        while True:
            if self.live and not outage.due():
                return None
            try:
                result = self.bus.publish(
                    self.stream,
                    msg,
                    downstream_group=DETECTOR_GROUP,
                    backlog=self.backlog,
                    # Live video favours freshness: drop the oldest frames. Files favour completeness: wait.
                    policy="drop_oldest" if self.live else "wait",
                    stats_key=self.stats_key,
                    stats={"last_seq": seq},
                    should_stop=should_stop,
                )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if outage.began():
                    log.warning(
                        "%s: Redis is unreachable (%s); %s",
                        self.camera,
                        exc,
                        "dropping frames until it is back" if self.live else f"frame {seq} waits for it",
                    )
                if self.live:
                    # It may have reached Redis before the connection broke: its number is never used again, so
                    # (camera, seq) never names two different frames.
                    self._next_seq = seq + 1
                    return None
                while not outage.due():
                    if should_stop():
                        raise StopRequested(f"stopped while waiting for Redis to publish frame {seq}") from exc
                    time.sleep(0.05)
                continue
            if outage.down_since is not None:
                self._outage_ended()
            return result

    def _outage_ended(self) -> None:
        lost = self.counters.offline_drops - self._outage.reported_drops
        log.warning(
            "%s: Redis is back after %.1fs%s",
            self.camera,
            time.monotonic() - (self._outage.down_since or 0.0),
            f"; {lost} frames dropped meanwhile" if self.live else "",
        )
        self._outage = _Outage(reported_drops=self.counters.offline_drops)
        if lost:
            try:
                self.bus.redis.hincrby(self.stats_key, "offline_drops", lost)
            except redis.RedisError:
                self._outage.reported_drops -= lost  # reported with the next outage's end


@dataclass
class _Outage:
    """Redis seen unreachable since `down_since`: the next attempt is due at `retry_at`, 0.1 s after the first
    failure, doubling to 1 s, so Redis's return is noticed within a second."""

    down_since: float | None = None
    retry_at: float = 0.0
    delay: float = 0.1
    reported_drops: int = 0  # offline drops already added to the stats hash

    def due(self) -> bool:
        return time.monotonic() >= self.retry_at

    def began(self) -> bool:
        """Note a failed attempt; True for the first of an outage."""
        now = time.monotonic()
        first = self.down_since is None
        if first:
            self.down_since = now
        self.retry_at = now + self.delay
        self.delay = min(self.delay * 2, 1.0)
        return first


T = TypeVar("T")


class _OrderedPool:
    """`size` daemon threads that run ``work`` of several jobs at once and ``then`` of each strictly in the
    order the jobs were submitted (a turn counter). Daemons, so a job blocked on a full stream never holds up
    interpreter exit, as a ThreadPoolExecutor's threads would."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[int, Callable[[], Any], Callable[[Any], None], Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self._turn = threading.Condition()
        self._next_ticket = 0  # submitted jobs
        self._now_serving = 0  # jobs whose `then` has run (or failed)
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, work: Callable[[], T], then: Callable[[T], None]) -> Future[None]:
        future: Future[None] = Future()
        self._jobs.put((self._next_ticket, work, then, future))
        self._next_ticket += 1
        return future

    def close(self, timeout: float = 10.0) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def _is_turn(self, ticket: int) -> bool:
        return self._now_serving == ticket

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            ticket, work, then, future = job
            error: BaseException | None = None
            try:
                result = work()
            except BaseException as exc:
                error = exc
            with self._turn:
                self._turn.wait_for(functools.partial(self._is_turn, ticket))
                try:
                    if error is None:
                        then(result)
                except BaseException as exc:
                    error = exc
                finally:
                    self._now_serving += 1
                    self._turn.notify_all()
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
