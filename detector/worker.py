"""The detector stage: frames of every camera in → one FacesMsg per frame (with crops) out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from detector.base import Detection, FaceDetector
from detector.crops import quality, square_crop
from detector.leases import CameraLeases
from detector.tracking import FaceTracker
from fervid.bus import Bus, Delivery, StopRequested
from fervid.contracts import CLASSIFIER_GROUP, Box, Face, FacesMsg, FrameMsg
from fervid.metrics import (
    CAMERA_BATCH,
    CAMERA_FACES,
    CAMERA_FACES_PER_FRAME,
    CAMERA_INFERENCE_SECONDS,
    CAMERA_SKIPPED,
    INFERENCE_BATCH,
    INFERENCE_SECONDS,
    FpsMeter,
)
from fervid.settings import Settings
from fervid.worker import Outcome

log = logging.getLogger(__name__)

MAX_PIXELS = 8192 * 8192  # a frame beyond this is not a camera frame: dead-letter it instead of allocating it


class DetectorStage:
    """Reads the frame streams of the cameras it holds a lease on (see detector/leases.py), batches across
    them, detects, tracks per camera in frame order, and publishes one FacesMsg per frame."""

    name = "detector"
    message_type = FrameMsg

    def __init__(
        self, bus: Bus, detector: FaceDetector, settings: Settings, should_stop: Callable[[], bool] = lambda: False
    ) -> None:
        self.bus = bus
        self.detector = detector
        self.cfg = settings.detector
        self.batch_size = self.cfg.batch_size
        self.max_wait_ms = self.cfg.max_wait_ms
        self.faces_backlog = settings.bus.faces_backlog
        self.should_stop = should_stop
        self.keys = bus.keys
        self.tracker = FaceTracker(lambda camera: int(bus.redis.incr(self.keys.camera(camera, "track_epoch"))))
        self.leases = CameraLeases(bus.redis, bus.consumer, self.cfg.lease_ms, self.keys)
        self._cameras: list[str] = []
        self._cameras_at = 0.0
        self.fps = FpsMeter(self.name)

    @classmethod
    def from_settings(cls, settings: Settings, bus: Bus, should_stop: Callable[[], bool]) -> DetectorStage:
        """The stage as every deployment builds it: the configured backend, loaded here."""
        from detector.registry import create_configured

        cfg = settings.detector
        return cls(bus, create_configured(cfg.backend, device=cfg.device, min_face=cfg.min_face), settings, should_stop)

    def input_streams(self) -> Sequence[str]:
        """Called by the worker loop before each read, after the previous batch was acked: the one place where
        leases are renewed, taken and given back."""
        # Cameras come and go while we run: refresh the set every couple of seconds, not on every read.
        if time.monotonic() - self._cameras_at > 2.0:
            self._cameras = sorted(c.decode() for c in self.bus.redis.smembers(self.keys.cameras))
            self._cameras_at = time.monotonic()
        change = self.leases.tick(self._cameras)
        for camera in change.lost + change.acquired:
            self.tracker.reset(camera)  # someone else tracked (or will track) it meanwhile: fresh tracks, new epoch
        for camera in change.acquired:
            self.bus.adopt(self.keys.frames(camera))  # what the previous holder left pending comes first
        return [self.keys.frames(c) for c in change.held]

    def close(self) -> None:
        """Graceful stop, after the last ack: give the cameras back so other replicas take them at once."""
        self.leases.release_all()

    def handle(self, batch: list[tuple[Delivery, FrameMsg]]) -> Outcome:
        outcome = Outcome()
        images: list[np.ndarray] = []
        good: list[tuple[Delivery, FrameMsg]] = []
        for delivery, msg in batch:
            try:
                images.append(decode_jpeg(msg))
                good.append((delivery, msg))
            except ValueError as exc:
                outcome.dead.append((delivery, str(exc)))
                CAMERA_SKIPPED.labels(msg.frame.camera, self.name).inc()
        started = time.perf_counter()
        detections = self.detector.detect(images) if images else []
        if images:
            self._observe_batch(time.perf_counter() - started, [m.frame.camera for _, m in good])
        lost: list[Delivery] = []  # frames of cameras whose lease we lost: left for the new holder
        # Track in each camera's frame order, whatever order the batch arrived in.
        for i in sorted(range(len(good)), key=lambda i: (good[i][1].frame.camera, good[i][1].frame.seq)):
            delivery, msg = good[i]
            camera = msg.frame.camera
            if not self.leases.hold(camera):
                lost.append(delivery)
                continue
            faces = self.faces(images[i], msg, detections[i])
            out = FacesMsg(frame=msg.frame, detector=self.detector.name, faces=tuple(faces))
            try:
                self.bus.publish(
                    self.keys.faces, out, downstream_group=CLASSIFIER_GROUP, backlog=self.faces_backlog,
                    should_stop=lambda: self.should_stop() or not self.leases.hold(camera),
                )  # fmt: skip
            except StopRequested:
                if self.should_stop():
                    return outcome  # acked: the frames published so far; the rest is returned
                lost.append(delivery)
                continue
            outcome.done.append(delivery)
            self.fps.add(camera)
            CAMERA_FACES.labels(camera, self.name).inc(len(faces))
            CAMERA_FACES_PER_FRAME.labels(camera, self.name).observe(len(faces))
        if lost:
            self.bus.release(lost)  # pending, marked idle: the new holder adopts or reclaims them
        return outcome

    def _observe_batch(self, seconds: float, cameras: list[str]) -> None:
        INFERENCE_SECONDS.labels(self.name, self.detector.name).observe(seconds)
        INFERENCE_BATCH.labels(self.name, self.detector.name).observe(len(cameras))
        for camera in set(cameras):
            CAMERA_INFERENCE_SECONDS.labels(camera, self.name).observe(seconds)
            CAMERA_BATCH.labels(camera, self.name).observe(len(cameras))

    def faces(self, image: np.ndarray, msg: FrameMsg, detections: list[Detection]) -> list[Face]:
        kept = [d for d in detections if d.score >= self.cfg.min_score and min(d.width, d.height) >= self.cfg.min_face]
        track_ids = self.tracker.assign(msg.frame.camera, msg.frame.seq, msg.frame.capture_ts, kept)
        faces: list[Face] = []
        for det, track_id in zip(kept, track_ids):
            crop = square_crop(image, det, self.cfg.crop_size, self.cfg.crop_margin)
            ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                continue
            box = Box(det.x1, det.y1, det.width, det.height)
            faces.append(
                Face(
                    index=len(faces),
                    box=box,
                    score=det.score,
                    crop=jpeg.tobytes(),
                    track_id=track_id,
                    quality=quality(crop, det),
                )
            )
        return faces


def decode_jpeg(msg: FrameMsg) -> np.ndarray:
    """The frame's pixels, or ValueError saying why not (the worker dead-letters the frame with that reason)."""
    ref = msg.frame
    if ref.width * ref.height > MAX_PIXELS:
        raise ValueError(f"{ref.camera}#{ref.seq}: absurd frame size {ref.width}x{ref.height}")
    if not msg.jpeg:
        raise ValueError(f"{ref.camera}#{ref.seq}: empty frame")
    image = cv2.imdecode(np.frombuffer(msg.jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{ref.camera}#{ref.seq}: corrupt JPEG ({len(msg.jpeg)} bytes)")
    if image.shape[:2] != (ref.height, ref.width):
        raise ValueError(
            f"{ref.camera}#{ref.seq}: JPEG is {image.shape[1]}x{image.shape[0]}, message says {ref.width}x{ref.height}"
        )
    return image
