"""Test frames with ground truth: the astronaut's face (skimage) pasted at known places, scales and flips."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage import data

# The face in skimage's astronaut(), x1, y1, x2, y2 (hand-checked; RetinaFace finds ~x177 y56 w95 h120).
ASTRONAUT_FACE = (177.0, 56.0, 272.0, 176.0)
_MARGIN = 50


def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def face_crop() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A crop around the face, and the face box in crop coordinates."""
    x1, y1, x2, y2 = ASTRONAUT_FACE
    cx1, cy1 = int(x1) - _MARGIN, int(y1) - _MARGIN
    cx2, cy2 = int(x2) + _MARGIN, int(y2) + _MARGIN
    crop = astronaut_bgr()[cy1:cy2, cx1:cx2].copy()
    return crop, (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1)


@dataclass
class Frame:
    image: np.ndarray
    boxes: list[tuple[float, float, float, float]]


def background(width: int, height: int, kind: str, seed: int = 0) -> np.ndarray:
    if kind == "plain":
        return np.full((height, width, 3), (90, 110, 120), np.uint8)
    rng = np.random.default_rng(seed)
    noise = rng.normal(128, 30, (height // 4, width // 4, 3))
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)  # blotchy, camera-like
    return np.clip(noise + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)


def make_frame(
    width: int, height: int, kind: str, placements: list[tuple[int, int, float, bool]], seed: int = 0
) -> Frame:
    """`placements`: (x, y, scale, flip) of the face crop's top-left corner."""
    img = background(width, height, kind, seed)
    crop, (fx1, fy1, fx2, fy2) = face_crop()
    boxes = []
    for x, y, scale, flip in placements:
        c = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        b = (fx1 * scale, fy1 * scale, fx2 * scale, fy2 * scale)
        if flip:
            c = c[:, ::-1]
            b = (c.shape[1] - b[2], b[1], c.shape[1] - b[0], b[3])
        img[y : y + c.shape[0], x : x + c.shape[1]] = c
        boxes.append((b[0] + x, b[1] + y, b[2] + x, b[3] + y))
    return Frame(img, boxes)


def standard_frames() -> list[Frame]:
    return [
        make_frame(640, 480, "plain", [(40, 30, 1.0, False), (380, 220, 0.7, True)]),
        make_frame(640, 480, "noisy", [(300, 120, 1.2, True)], seed=1),
        make_frame(1280, 720, "noisy", [(80, 100, 1.5, False), (620, 320, 1.0, True), (1000, 60, 1.1, False)], seed=2),
        make_frame(1280, 720, "plain", [(500, 200, 2.0, False)]),
    ]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth, dets, thr: float = 0.5) -> tuple[int, list[float]]:
    """Greedy matching; returns (number of ground-truth faces found with IoU >= thr, best IoU per truth box)."""
    found, best = 0, []
    used: set[int] = set()
    for t in truth:
        scores = [(iou(t, d.box), i) for i, d in enumerate(dets) if i not in used]
        s, i = max(scores, default=(0.0, -1))
        best.append(s)
        if s >= thr:
            found += 1
            used.add(i)
    return found, best
