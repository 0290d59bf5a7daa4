"""OpenCV Haar-cascade face detector backend (Viola-Jones, `haarcascade_frontalface_default.xml`).

Needs OpenCV 4.x: OpenCV 5 dropped `CascadeClassifier` (the project pins opencv-python-headless < 5).

Scores: a Haar cascade gives no probability. We call `detectMultiScale3(..., outputRejectLevels=True)`, which returns,
per grouped box, the *level weight*: the summed weak-classifier responses of the cascade's last stage (higher = more
face-like; a clear frontal face gives ~5-10, borderline windows ~0-2). We map it with a logistic,
``score = 1 / (1 + exp(-weight / 2))``, monotonic and in [0, 1], so boxes sort and threshold consistently. It is a
ranking score, NOT a calibrated probability, and not comparable with RetinaFace's softmax scores.

Batching: OpenCV's cascade has no batch mode; `detect` loops over the frames on the CPU.
No landmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from cv2 import data as cv2_data  # where the cascades ship

from detector.base import Detection

CASCADE_FILE = "haarcascade_frontalface_default.xml"


def weight_to_score(weight: float, scale: float = 2.0) -> float:
    """Map a cascade level weight to [0, 1], monotonically increasing (logistic)."""
    z = max(-60.0, min(60.0, float(weight) / scale))
    return 1.0 / (1.0 + math.exp(-z))


class HaarDetector:
    """`FaceDetector` backed by `cv2.CascadeClassifier`.

    Options: ``scale_factor`` and ``min_neighbors`` (OpenCV's), ``min_face`` (smallest face side in pixels),
    ``max_size`` (downscale frames whose longest side exceeds it; boxes are mapped back; None = never),
    ``score_threshold`` (drop boxes whose mapped score is below it), ``equalize`` (histogram-equalise the grey image).
    """

    name = "haar"

    def __init__(
        self,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face: int = 24,
        max_size: int | None = 640,
        score_threshold: float = 0.0,
        equalize: bool = True,
        cascade_path: str | None = None,
    ) -> None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5); install opencv<5"
            )
        path = cascade_path or (cv2_data.haarcascades + CASCADE_FILE)
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"Could not load Haar cascade from {path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face = int(min_face)
        self.max_size = max_size
        self.score_threshold = score_threshold
        self.equalize = equalize

    def _detect_one(self, image: np.ndarray) -> list[Detection]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Expected a BGR uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        scale = 1.0
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if self.max_size and max(h, w) > self.max_size:
            scale = self.max_size / max(h, w)
            grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if self.equalize:
            grey = cv2.equalizeHist(grey)
        min_side = max(1, int(round(self.min_face * scale)))
        rects, _levels, weights = self.cascade.detectMultiScale3(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        dets = []
        for (x, y, bw, bh), wt in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1), strict=True):
            score = weight_to_score(wt)
            if score < self.score_threshold:
                continue
            x1, y1 = min(x / scale, w), min(y / scale, h)
            x2, y2 = min((x + bw) / scale, w), min((y + bh) / scale, h)
            if x2 > x1 and y2 > y1:
                dets.append(Detection(float(x1), float(y1), float(x2), float(y2), score))
        dets.sort(key=lambda d: d.score, reverse=True)
        return dets

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """One frame at a time (OpenCV cascades have no batch mode)."""
        return [self._detect_one(im) for im in images]
