"""Turning decoded frames of one camera into FrameMsg entries on its frame stream."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from fervid.bus import Bus
from fervid.contracts import CAMERAS_KEY, DETECTOR_GROUP, FrameMsg, FrameRef, camera_key, frames_stream
from fervid.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class CameraCounters:
    decoded: int = 0
    published: int = 0
    dropped: int = 0  # oldest frames dropped from the stream because the detector fell behind (live only)
    first_seq: int | None = None
    last_seq: int | None = None


class FramePublisher:
    """Resizes, JPEG-encodes and publishes frames of one camera with a per-camera monotonic sequence number.

    The sequence continues from the last one stored in Redis, so it stays monotonic across reconnects and
    ingest restarts, which keeps (camera, seq) a unique key downstream.
    """

    def __init__(self, bus: Bus, camera: str, settings: Settings, *, live: bool) -> None:
        self.bus = bus
        self.camera = camera
        self.live = live
        self.stream = frames_stream(camera)
        self.stats_key = camera_key(camera, "stats")
        self.max_size = settings.ingest.max_size
        self.quality = settings.ingest.jpeg_quality
        self.backlog = settings.bus.frame_backlog
        self.counters = CameraCounters()
        last = bus.redis.hget(self.stats_key, "last_seq")
        self._next_seq = int(last) + 1 if last is not None else 0
        bus.ensure_group(self.stream, DETECTOR_GROUP)
        bus.redis.sadd(CAMERAS_KEY, camera)

    def publish(self, image: np.ndarray, capture_ts: float, should_stop: Callable[[], bool] | None = None) -> None:
        image = downscale(image, self.max_size)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError(f"{self.camera}: JPEG encoding failed for a {image.shape} frame")
        h, w = image.shape[:2]
        seq = self._next_seq
        msg = FrameMsg(FrameRef(self.camera, seq, capture_ts, w, h), jpeg.tobytes(), live=self.live)
        result = self.bus.publish(
            self.stream,
            msg,
            downstream_group=DETECTOR_GROUP,
            backlog=self.backlog,
            # Live video favours freshness: drop the oldest frames. Files favour completeness: wait.
            policy="drop_oldest" if self.live else "wait",
            stats_key=self.stats_key,
            should_stop=should_stop or (lambda: False),
        )
        self.bus.redis.hset(self.stats_key, "last_seq", seq)
        self._next_seq = seq + 1
        c = self.counters
        c.published += 1
        c.dropped += result.dropped
        c.first_seq = seq if c.first_seq is None else c.first_seq
        c.last_seq = seq


def downscale(image: np.ndarray, max_size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max_size / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
