"""Drawing faces on a frame for people to look at (`fervid demo --annotate`): boxes and labels with supervision's
annotators, coloured by emotion, and a bar per emotion probability beside each face (drawn with OpenCV:
supervision's PercentageBarAnnotator shows one value, not seven)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import supervision as sv

from fervid.contracts import EMOTIONS

# One colour per emotion (FER-2013 order), so a label change is visible at a glance.
PALETTE = sv.ColorPalette.from_hex(["#e53935", "#8e24aa", "#5e35b1", "#43a047", "#1e88e5", "#fdd835", "#9e9e9e"])
_BAR_W, _BAR_H, _BAR_GAP = 60, 7, 2


@dataclass(frozen=True)
class FaceLabel:
    """One face to draw: box (x1, y1, x2, y2) in frame pixels, track id, label and the 7 probabilities."""

    box: tuple[float, float, float, float]
    track_id: int | None
    label: str
    probabilities: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.label not in EMOTIONS:
            raise ValueError(f"label must be one of {EMOTIONS}, got {self.label!r}")
        if len(self.probabilities) != len(EMOTIONS):
            raise ValueError(f"expected {len(EMOTIONS)} probabilities, got {len(self.probabilities)}")


class FrameAnnotator:
    def __init__(self) -> None:
        self.boxes = sv.BoxAnnotator(color=PALETTE, thickness=2)
        self.labels = sv.LabelAnnotator(
            color=PALETTE, text_scale=0.45, text_padding=4, text_position=sv.Position.TOP_LEFT
        )

    def annotate(self, image: np.ndarray, faces: Sequence[FaceLabel]) -> np.ndarray:
        """A copy of `image` (BGR) with `faces` drawn on it."""
        out = image.copy()
        if not faces:
            return out
        detections = sv.Detections(
            xyxy=np.array([f.box for f in faces], dtype=np.float32),
            class_id=np.array([EMOTIONS.index(f.label) for f in faces], dtype=int),
        )
        texts = [
            f"#{f.track_id % 1_000_000 if f.track_id is not None else '-'} {f.label} {max(f.probabilities):.2f}"
            for f in faces
        ]
        out = self.boxes.annotate(out, detections)
        out = self.labels.annotate(out, detections, labels=texts)
        for face in faces:
            _draw_bars(out, face)
        return out


def _draw_bars(image: np.ndarray, face: FaceLabel) -> None:
    """Seven bars right of the box (left of it when there is no room), one per emotion, with initials."""
    h, w = image.shape[:2]
    x1, y1, x2, _ = (int(round(v)) for v in face.box)
    panel_w = _BAR_W + 22
    x = x2 + 4 if x2 + 4 + panel_w <= w else max(0, x1 - 4 - panel_w)
    y = max(0, min(y1, h - len(EMOTIONS) * (_BAR_H + _BAR_GAP)))
    for k, (name, p) in enumerate(zip(EMOTIONS, face.probabilities, strict=True)):
        top = y + k * (_BAR_H + _BAR_GAP)
        color = PALETTE.by_idx(k).as_bgr()
        cv2.putText(image, name[:2], (x, top + _BAR_H), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.rectangle(image, (x + 20, top), (x + 20 + _BAR_W, top + _BAR_H), (60, 60, 60), -1)
        filled = int(round(_BAR_W * min(max(p, 0.0), 1.0)))
        if filled:
            cv2.rectangle(image, (x + 20, top), (x + 20 + filled, top + _BAR_H), color, -1)
