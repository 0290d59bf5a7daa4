"""Sample clips made from a real face (scikit-image's `astronaut()`, smiling), with ground-truth boxes.

Used by `fervid demo` with no source, by the benchmarks and by the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# The astronaut's face in skimage's 512x512 RGB image, and a patch around it (hair, chin, some background).
_FACE = (177, 56, 272, 176)  # x1, y1, x2, y2
_PATCH = (140, 16, 310, 216)


@dataclass(frozen=True)
class GroundTruth:
    """Face boxes per frame, (x1, y1, x2, y2) in frame pixels."""

    boxes: list[list[tuple[float, float, float, float]]]
    fps: int
    width: int
    height: int

    @property
    def faces(self) -> int:
        return sum(len(b) for b in self.boxes)


def face_patch(scale: float, flip: bool = False) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The astronaut patch in BGR, resized by `scale`, and the face box inside it."""
    from skimage import data

    rgb = data.astronaut()
    x1, y1, x2, y2 = _PATCH
    patch = cv2.cvtColor(rgb[y1:y2, x1:x2], cv2.COLOR_RGB2BGR)
    w, h = round((x2 - x1) * scale), round((y2 - y1) * scale)
    patch = cv2.resize(patch, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    fx1, fy1, fx2, fy2 = (
        (_FACE[0] - x1) * scale,
        (_FACE[1] - y1) * scale,
        (_FACE[2] - x1) * scale,
        (_FACE[3] - y1) * scale,
    )
    if flip:
        patch = patch[:, ::-1].copy()
        fx1, fx2 = w - fx2, w - fx1
    return patch, (fx1, fy1, fx2, fy2)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured, face-free background (a wall with some noise), BGR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 40 * xx / width, 110 + 30 * yy / height, 120 + 20 * (xx + yy) / (width + height)], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 12, (height, width, 3)).astype(np.float32), (0, 0), 3)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def render_frames(
    seconds: float = 4.0, fps: int = 30, width: int = 640, height: int = 480, faces: int = 2, seed: int = 0
) -> tuple[list[np.ndarray], GroundTruth]:
    """Frames with `faces` real faces (1 or 2) moving smoothly along ellipses, and their ground truth."""
    if faces not in (0, 1, 2):
        raise ValueError(f"faces must be 0, 1 or 2, got {faces}")
    bg = background(width, height, seed)
    scale = min(width, height) / 480 * 0.75
    patches = [face_patch(scale), face_patch(scale * 0.9, flip=True)][:faces]
    n = max(1, round(seconds * fps))
    frames, truth = [], []
    for i in range(n):
        t = i / fps
        frame = bg.copy()
        boxes = []
        for k, (patch, (fx1, fy1, fx2, fy2)) in enumerate(patches):
            ph, pw = patch.shape[:2]
            # Each face moves on its own half of the frame, so the two never overlap.
            cx = width * (0.27 + 0.5 * k) + width * 0.08 * math.sin(2 * math.pi * t / 4 + k)
            cy = height * 0.5 + height * 0.12 * math.cos(2 * math.pi * t / 3 + k)
            x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
            x0, y0 = min(max(x0, 0), width - pw), min(max(y0, 0), height - ph)
            frame[y0 : y0 + ph, x0 : x0 + pw] = patch
            boxes.append((x0 + fx1, y0 + fy1, x0 + fx2, y0 + fy2))
        frames.append(frame)
        truth.append(boxes)
    return frames, GroundTruth(truth, fps, width, height)


def write_video(path: Path, frames: list[np.ndarray], fps: int, *, gop: int = 30, crf: int = 20) -> Path:
    """H.264 in MP4 (or MKV), no B-frames and a short GOP, so it can also be served over RTSP as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "bf": "0", "g": str(gop), "preset": "veryfast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_sample_clip(
    path: Path, seconds: float = 4.0, fps: int = 30, width: int = 640, height: int = 480, faces: int = 2
) -> GroundTruth:
    frames, truth = render_frames(seconds, fps, width, height, faces)
    write_video(path, frames, fps)
    return truth
