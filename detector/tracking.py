"""Per-camera face tracks (ByteTrack from Roboflow's `trackers`), so emotion can be smoothed per person.

Track ids are unique per camera for the life of the deployment: each tracker instance takes a fresh epoch
from Redis (INCR), and ids are ``epoch * 1_000_000 + local id``, so a detector restart never reuses an id
that is already in the database.

Tracking needs each camera's frames in order, in one place: a camera lease (detector/leases.py) sends each
camera's frames to one replica, which processes them in stream order, and a frame that arrives out of order (a
reclaimed, older frame) is left untracked rather than allowed to corrupt the tracks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from detector.base import Detection

EPOCH_STRIDE = 1_000_000


class FaceTracker:
    def __init__(self, next_epoch: Callable[[str], int], lost_seconds: float = 2.0) -> None:
        self._next_epoch = next_epoch
        self.lost_seconds = lost_seconds
        self._trackers: dict[str, tuple[int, ByteTrackTracker]] = {}
        self._last: dict[str, tuple[int, float]] = {}  # camera -> (seq, capture_ts) of the last tracked frame

    def reset(self, camera: str) -> None:
        """Forget `camera`'s tracks: its next frame starts a fresh epoch (another replica may have tracked it)."""
        self._trackers.pop(camera, None)
        self._last.pop(camera, None)

    def assign(self, camera: str, seq: int, ts: float, detections: Sequence[Detection]) -> list[int | None]:
        """One track id per detection (None while a track is unconfirmed, or for an out-of-order frame)."""
        last = self._last.get(camera)
        if last is not None and seq <= last[0]:
            return [None] * len(detections)
        if camera not in self._trackers or (last is not None and ts - last[1] > self.lost_seconds):
            # A long gap (reconnect, restart) starts fresh tracks: nothing from before can be associated.
            self._trackers[camera] = (
                self._next_epoch(camera),
                ByteTrackTracker(
                    lost_track_buffer=int(30 * self.lost_seconds),
                    track_activation_threshold=0.5,
                    high_conf_det_threshold=0.5,
                ),
            )
        self._last[camera] = (seq, ts)
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
        for index, tid in zip(
            tracked.data.get("index", []), tracked.tracker_id if tracked.tracker_id is not None else []
        ):
            if tid >= 0:
                ids[int(index)] = epoch * EPOCH_STRIDE + int(tid)
        return ids
