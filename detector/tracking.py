"""Per-camera face tracks (ByteTrack from Roboflow's `trackers`), so emotion can be smoothed per person.

Track ids are unique per camera for the life of the deployment: each tracker instance takes a fresh epoch
from Redis (INCR), and ids are ``epoch * 1_000_000 + local id``, so a detector restart never reuses an id
that is already in the database.

Tracking needs each camera's frames in order, in one place: a camera lease (detector/leases.py) sends each
camera's frames to one replica, which processes them in stream order, and a frame that arrives out of order (a
reclaimed, older frame) is left untracked rather than allowed to corrupt the tracks.

Detection interval (DeepStream's ``interval``): with ``interval`` k > 1 the detector runs on every k-th frame
of a camera (:meth:`FaceTracker.plan`) and the frames in between get the faces of the last detected frame, each
box moved on at its track's velocity between the last two detected frames (:meth:`FaceTracker.carried`), so every
frame still has its crops classified. A camera's first frame, a frame after a gap (dropped frames, a reconnect)
and a frame after a reset are always detected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from detector.base import Detection

EPOCH_STRIDE = 1_000_000


@dataclass(frozen=True)
class _Detected:
    """A detected frame's faces with their track ids."""

    seq: int
    ts: float
    faces: tuple[tuple[Detection, int | None], ...]


class FaceTracker:
    def __init__(self, next_epoch: Callable[[str], int], lost_seconds: float = 2.0, interval: int = 1) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self._next_epoch = next_epoch
        self.lost_seconds = lost_seconds
        self.interval = interval
        self._trackers: dict[str, tuple[int, ByteTrackTracker]] = {}
        self._last: dict[str, tuple[int, float]] = {}  # camera -> (seq, capture_ts) of the last tracked frame
        self._detected: dict[str, tuple[_Detected | None, _Detected]] = {}  # camera -> its last two detected frames

    def reset(self, camera: str) -> None:
        """Forget `camera`'s tracks: its next frame starts a fresh epoch (another replica may have tracked it)."""
        self._trackers.pop(camera, None)
        self._last.pop(camera, None)
        self._detected.pop(camera, None)

    def plan(self, frames: Sequence[tuple[str, int, float]]) -> list[bool]:
        """For (camera, seq, capture_ts) frames in each camera's order: which to detect (True) and which get
        :meth:`carried` faces. Every frame with interval 1; otherwise every `interval`-th frame after the last
        detected one, and any frame with nothing recent to carry (a camera's first, after a gap, out of order)."""
        if self.interval == 1:
            return [True] * len(frames)
        last = {camera: (d[1].seq, d[1].ts) for camera, d in self._detected.items()}
        out: list[bool] = []
        for camera, seq, ts in frames:
            prev = last.get(camera)
            due = prev is None or seq <= prev[0] or seq - prev[0] >= self.interval or ts - prev[1] > self.lost_seconds
            if due:
                last[camera] = (seq, ts)
            out.append(due)
        return out

    def carried(self, camera: str, seq: int, width: int, height: int) -> list[tuple[Detection, int | None]]:
        """The faces of `camera`'s last detected frame for frame `seq`, with their track ids: a face tracked in
        both of the last two detected frames moves on at its velocity between them; boxes are clipped to the
        frame, and a face moved out of it is left out."""
        if camera not in self._detected:
            return []
        prev, last = self._detected[camera]
        before = {tid: det for det, tid in prev.faces if tid is not None} if prev is not None else {}
        out: list[tuple[Detection, int | None]] = []
        for det, tid in last.faces:
            box = np.array(det.box)
            if tid is not None and tid in before and prev is not None and last.seq > prev.seq:
                velocity = (box - np.array(before[tid].box)) / (last.seq - prev.seq)
                box = box + velocity * (seq - last.seq)
            x1, y1 = max(0.0, float(box[0])), max(0.0, float(box[1]))
            x2, y2 = min(float(width), float(box[2])), min(float(height), float(box[3]))
            if x2 - x1 < 1.0 or y2 - y1 < 1.0:
                continue
            out.append((Detection(x1, y1, x2, y2, det.score, None), tid))
        return out

    def assign(self, camera: str, seq: int, ts: float, detections: Sequence[Detection]) -> list[int | None]:
        """One track id per detection (None while a track is unconfirmed, or for an out-of-order frame)."""
        last = self._last.get(camera)
        if last is not None and seq <= last[0]:
            return [None] * len(detections)
        if camera not in self._trackers or (last is not None and ts - last[1] > self.lost_seconds):
            # A long gap (reconnect, restart) starts fresh tracks: nothing from before can be associated.
            self._detected.pop(camera, None)
            self._trackers[camera] = (
                self._next_epoch(camera),
                ByteTrackTracker(
                    lost_track_buffer=int(30 * self.lost_seconds),
                    track_activation_threshold=0.5,
                    high_conf_det_threshold=0.5,
                ),
            )
        self._last[camera] = (seq, ts)
        ids = self._track(camera, ts, detections)
        previous = self._detected.get(camera)
        self._detected[camera] = (
            previous[1] if previous else None,
            _Detected(seq, ts, tuple(zip(detections, ids, strict=True))),
        )
        return ids

    def _track(self, camera: str, ts: float, detections: Sequence[Detection]) -> list[int | None]:
        epoch, tracker = self._trackers[camera]
        if not detections:
            tracker.update(sv.Detections.empty(), timestamp=ts)
            return []
        dets = sv.Detections(
            xyxy=np.array([d.box for d in detections], dtype=np.float32),
            confidence=np.array([d.score for d in detections], dtype=np.float32),
            class_id=np.zeros(len(detections), dtype=int),
            data={"index": np.arange(len(detections))},
        )
        tracked = tracker.update(dets, timestamp=ts)
        ids: list[int | None] = [None] * len(detections)
        if tracked.tracker_id is None:
            return ids
        for index, tid in zip(tracked.data.get("index", []), tracked.tracker_id, strict=True):
            if tid >= 0:
                ids[int(index)] = epoch * EPOCH_STRIDE + int(tid)
        return ids
