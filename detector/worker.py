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
from fervid.bus import Bus, Delivery, PartlyPublished, as_text
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
from fervid.threads import configure_torch, cpu_inference
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
        self.tracker = FaceTracker(
            lambda camera: int(bus.redis.incr(self.keys.camera(camera, "track_epoch"))), interval=self.cfg.interval
        )
        self.leases = CameraLeases(bus.redis, bus.consumer, self.cfg.lease_ms, self.keys)
        self._cameras: list[str] = []
        self._cameras_at = 0.0
        self.fps = FpsMeter(self.name)

    @classmethod
    def from_settings(cls, settings: Settings, bus: Bus, should_stop: Callable[[], bool]) -> DetectorStage:
        """The stage as every deployment builds it: the configured backend, loaded here."""
        from detector.registry import create_configured

        cfg = settings.detector
        configure_torch(settings.threads)
        return cls(bus, create_configured(cfg.backend, device=cfg.device, min_face=cfg.min_face), settings, should_stop)

    def input_streams(self) -> Sequence[str]:
        """Called by the worker loop before each read, after the previous batch was acked: the one place where
        leases are renewed, taken and given back."""
        # Cameras come and go while we run: refresh the set every couple of seconds, not on every read.
        if time.monotonic() - self._cameras_at > 2.0:
            self._cameras = sorted(as_text(c) for c in self.bus.redis.smembers(self.keys.cameras))
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
        # Track in each camera's frame order, whatever order the batch arrived in.
        order = sorted(range(len(good)), key=lambda i: (good[i][1].frame.camera, good[i][1].frame.seq))
        refs = [good[i][1].frame for i in order]
        due = self.tracker.plan([(f.camera, f.seq, f.capture_ts) for f in refs])  # every frame, unless interval > 1
        detect = [i for i, d in zip(order, due, strict=True) if d]
        detections: dict[int, list[Detection]] = {}
        if detect:
            started = time.perf_counter()
            with cpu_inference(getattr(self.detector, "device", "cpu")):  # one pool, shared with the classifier
                found = self.detector.detect([images[i] for i in detect])
            detections = dict(zip(detect, found, strict=True))
            self._observe_batch(time.perf_counter() - started, [good[i][1].frame.camera for i in detect])
        lost: list[Delivery] = []  # frames of cameras whose lease we lost: left for the new holder
        ready: list[tuple[Delivery, FacesMsg]] = []
        for i in order:
            delivery, msg = good[i]
            if not self.leases.hold(msg.frame.camera):
                lost.append(delivery)
                continue
            faces = self.faces(images[i], msg, detections.get(i))
            ready.append((delivery, FacesMsg(frame=msg.frame, detector=self.detector.name, faces=tuple(faces))))
        cameras = {msg.frame.camera for _, msg in ready}
        try:  # one round trip for the batch, in each camera's order
            published = self.bus.publish_many(
                self.keys.faces,
                [out for _, out in ready],
                downstream_group=CLASSIFIER_GROUP,
                backlog=self.faces_backlog,
                should_stop=lambda: self.should_stop() or not all(self.leases.hold(c) for c in cameras),
            )
        except PartlyPublished as exc:
            published = exc.published
            if not self.should_stop():  # a lease was lost while waiting for room: the rest is the new holder's
                lost.extend(delivery for delivery, _ in ready[len(published) :])
            # when stopping, the worker loop hands back what is not acked
        for (delivery, out), _ in zip(ready, published, strict=False):  # published: a prefix
            outcome.done.append(delivery)
            camera = out.frame.camera
            self.fps.add(camera)
            CAMERA_FACES.labels(camera, self.name).inc(len(out.faces))
            CAMERA_FACES_PER_FRAME.labels(camera, self.name).observe(len(out.faces))
        if lost:
            self.bus.release(lost)  # pending, marked idle: the new holder adopts or reclaims them
        return outcome

    def _observe_batch(self, seconds: float, cameras: list[str]) -> None:
        INFERENCE_SECONDS.labels(self.name, self.detector.name).observe(seconds)
        INFERENCE_BATCH.labels(self.name, self.detector.name).observe(len(cameras))
        for camera in set(cameras):
            CAMERA_INFERENCE_SECONDS.labels(camera, self.name).observe(seconds)
            CAMERA_BATCH.labels(camera, self.name).observe(len(cameras))

    def faces(self, image: np.ndarray, msg: FrameMsg, detections: list[Detection] | None) -> list[Face]:
        """The frame's faces with crops: its detections (tracked), or, for a frame planned without detection
        (None; interval > 1), the tracker's carried faces."""
        ref = msg.frame
        if detections is None:
            pairs = self.tracker.carried(ref.camera, ref.seq, ref.width, ref.height)
        else:
            cfg = self.cfg
            kept = [d for d in detections if d.score >= cfg.min_score and min(d.width, d.height) >= cfg.min_face]
            pairs = list(zip(kept, self.tracker.assign(ref.camera, ref.seq, ref.capture_ts, kept), strict=True))
        faces: list[Face] = []
        for det, track_id in pairs:
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
