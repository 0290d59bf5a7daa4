"""The classifier stage: FacesMsg in → EventsMsg out, crops batched across frames and cameras."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from classifier.serving import EmotionClassifier
from classifier.smoothing import Observation, Smoothed, TrackSmoother
from fervid.bus import Bus, Delivery, PartlyPublished
from fervid.contracts import STORAGE_GROUP, BadMessage, Emotion, EventsMsg, FacesMsg
from fervid.metrics import CAMERA_FACES, CAMERA_SKIPPED, INFERENCE_BATCH, INFERENCE_SECONDS, FpsMeter
from fervid.settings import Settings
from fervid.threads import configure_torch, cpu_inference
from fervid.worker import Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedFaces:
    """A FacesMsg with its crops decoded, as the worker loop hands it to `ClassifierStage.handle`."""

    msg: FacesMsg
    crops: tuple[np.ndarray, ...]

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> DecodedFaces:
        """Every crop of the frame or none: a corrupt face dead-letters its frame (BadMessage) rather than
        leaving its frame-mates to shift every later frame's probabilities onto the wrong faces."""
        msg = FacesMsg.decode(fields)
        try:
            return cls(msg, tuple(decode_crop(msg, i) for i in range(len(msg.faces))))
        except ValueError as exc:
            CAMERA_SKIPPED.labels(msg.frame.camera, ClassifierStage.name).inc()
            raise BadMessage(str(exc)) from exc


class ClassifierStage:
    name = "classifier"
    message_type = DecodedFaces

    def __init__(
        self,
        bus: Bus,
        classifier: EmotionClassifier,
        settings: Settings,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.bus = bus
        self.classifier = classifier
        # A batch is counted in messages (frames); the model sees all their crops in one forward pass.
        self.batch_size = settings.classifier.batch_size
        self.max_wait_ms = settings.classifier.max_wait_ms
        self.events_backlog = settings.bus.events_backlog
        self.should_stop = should_stop
        smoothing = settings.classifier.smoothing
        self.smoother = TrackSmoother(bus.redis, smoothing, bus.keys) if smoothing.enabled else None
        self.fps = FpsMeter(self.name)

    @classmethod
    def from_settings(cls, settings: Settings, bus: Bus, should_stop: Callable[[], bool]) -> ClassifierStage:
        """The stage as every deployment builds it: the configured model (or checkpoint), loaded here."""
        from classifier.serving import load_classifier

        cfg = settings.classifier
        configure_torch(settings.threads)
        model = load_classifier(cfg.model, cfg.checkpoint, cfg.device, compile=cfg.compile, max_crops=cfg.max_crops)
        return cls(bus, model, settings, should_stop)

    def input_streams(self) -> Sequence[str]:
        return [self.bus.keys.faces]

    def handle(self, batch: list[tuple[Delivery, DecodedFaces]]) -> Outcome:
        outcome = Outcome()
        frames = [(delivery, frame.msg) for delivery, frame in batch]
        crops = [crop for _, frame in batch for crop in frame.crops]
        started = time.perf_counter()
        with cpu_inference(self.classifier.device):  # one pool, shared with a detector in the same process
            probs = self.classifier.predict(crops)
        if crops:
            INFERENCE_SECONDS.labels(self.name, self.classifier.model_id).observe(time.perf_counter() - started)
            INFERENCE_BATCH.labels(self.name, self.classifier.model_id).observe(len(crops))
        smoothed = self._smooth(frames, probs)
        events = []
        k = 0
        for _, msg in frames:
            emotions = []
            for face in msg.faces:
                p = tuple(probs[k].tolist())
                emotions.append(Emotion.from_face(face, probs=p, smoothed_label=smoothed[k].label))
                k += 1
            model = self.classifier.model_id
            events.append(EventsMsg(frame=msg.frame, detector=msg.detector, model=model, emotions=tuple(emotions)))
        try:  # one round trip for the whole batch, in order
            published = self.bus.publish_many(
                self.bus.keys.events,
                events,
                downstream_group=STORAGE_GROUP,
                backlog=self.events_backlog,
                should_stop=self.should_stop,
            )
        except PartlyPublished as exc:
            published = exc.published  # acked: the frames published so far; the rest is returned
        for delivery, msg in frames[: len(published)]:
            outcome.done.append(delivery)
            self.fps.add(msg.frame.camera)
            CAMERA_FACES.labels(msg.frame.camera, self.name).inc(len(msg.faces))
        return outcome

    def _smooth(self, frames: list[tuple[Delivery, FacesMsg]], probs: np.ndarray) -> list[Smoothed]:
        """One Smoothed per crop (in crop order); untracked faces, or smoothing off, get none."""
        out = [Smoothed(None, None)] * len(probs)
        if self.smoother is None:
            return out
        where: list[int] = []
        observations: list[Observation] = []
        k = 0
        for _, msg in frames:
            for face in msg.faces:
                if face.track_id is not None:
                    where.append(k)
                    observations.append(
                        Observation(
                            msg.frame.camera, face.track_id, msg.frame.seq, msg.frame.capture_ts, probs[k].tolist()
                        )
                    )
                k += 1
        for k, s in zip(where, self.smoother.update(observations), strict=True):
            out[k] = s
        return out


def decode_crop(msg: FacesMsg, i: int) -> np.ndarray:
    """Face `i`'s crop, decoded to grayscale: every served model reads gray (see `make_preprocess`), and
    libjpeg then skips the chroma planes (about half the decoding). The luma plane is what BGR2GRAY of the
    color decode computes, to within rounding."""
    face = msg.faces[i]
    crop = cv2.imdecode(np.frombuffer(face.crop, np.uint8), cv2.IMREAD_GRAYSCALE) if face.crop else None
    if crop is None:
        raise ValueError(f"{msg.frame.camera}#{msg.frame.seq} face {i}: corrupt crop ({len(face.crop)} bytes)")
    return crop
