"""Synthetic 48x48 cartoon faces whose 7 expressions differ visibly (brows, eyes, mouth).

Real FER-2013 cannot be downloaded here; these stand in so tests exercise the real data
formats and a real learning signal. Each image gets random shift, scale, brightness and
noise so a model has to learn the features rather than memorise pixels.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SIZE = 48

# (brow angle: +ve = inner ends down, brow lift, eye radius, mouth kind)
STYLE = {
    "angry": (0.45, 0, 2, "flat_low"),
    "disgust": (0.0, 0, 2, "wavy"),
    "fear": (-0.45, 3, 4, "small_open"),
    "happy": (0.0, 0, 2, "smile"),
    "sad": (-0.45, 0, 2, "frown"),
    "surprise": (0.0, 5, 4, "big_open"),
    "neutral": (0.0, 0, 2, "flat"),
}


def draw_face(label: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    s = 4  # draw at 4x and downsample: anti-aliased, sub-pixel variation
    big = size * s
    bg = int(rng.integers(20, 90))
    img = np.full((big, big), bg, np.uint8)
    scale = rng.uniform(0.88, 1.08)
    cx = big / 2 + rng.uniform(-3, 3) * s
    cy = big / 2 + rng.uniform(-3, 3) * s
    skin = int(rng.integers(150, 220))
    ink = int(rng.integers(10, 60))

    def p(x: float, y: float) -> tuple[int, int]:
        return int(cx + x * scale * s), int(cy + y * scale * s)

    def r(v: float) -> int:
        return max(1, int(v * scale * s))

    cv2.ellipse(img, p(0, 0), (r(17), r(21)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    angle, lift, eye_r, mouth = STYLE[CLASSES[label]]
    th = max(1, int(1.4 * s))
    for side in (-1, 1):
        ex, ey = 7 * side, -5
        cv2.circle(img, p(ex, ey), r(eye_r), ink, -1, cv2.LINE_AA)
        # Brow: inner end (towards the nose) moved by angle.
        inner, outer = (ex - 4 * side, ex + 4 * side)
        by = ey - 5 - lift
        cv2.line(img, p(inner, by + angle * 8), p(outer, by - angle * 8), ink, th, cv2.LINE_AA)
    my = 9
    if mouth == "smile":
        cv2.ellipse(img, p(0, my - 3), (r(8), r(5)), 0, 20, 160, ink, th, cv2.LINE_AA)
    elif mouth == "frown":
        cv2.ellipse(img, p(0, my + 4), (r(8), r(5)), 0, 200, 340, ink, th, cv2.LINE_AA)
    elif mouth == "big_open":
        cv2.ellipse(img, p(0, my + 1), (r(4), r(6)), 0, 0, 360, ink, -1, cv2.LINE_AA)
    elif mouth == "small_open":
        cv2.ellipse(img, p(0, my), (r(5), r(2.5)), 0, 0, 360, ink, -1, cv2.LINE_AA)
    elif mouth == "wavy":
        pts = np.array([p(x, my + 2 * np.sin(x / 2.2)) for x in np.linspace(-8, 8, 12)], np.int32)
        cv2.polylines(img, [pts], False, ink, th, cv2.LINE_AA)
        cv2.line(img, p(-3, -1), p(3, 1), ink, th, cv2.LINE_AA)  # wrinkled nose
    elif mouth == "flat_low":
        cv2.line(img, p(-7, my + 2), p(7, my + 2), ink, th, cv2.LINE_AA)
    else:
        cv2.line(img, p(-7, my), p(7, my), ink, th, cv2.LINE_AA)
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    small *= rng.uniform(0.8, 1.15)
    small += rng.normal(0, 6, small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


def make_samples(n_per_class: int, seed: int) -> Iterable[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for _ in range(n_per_class):
        for label in range(len(CLASSES)):
            yield label, draw_face(label, rng)


# Kaggle-mirror spellings for a few folders, to exercise alias mapping.
FOLDER_NAMES = {"angry": "anger", "surprise": "surprised", "fear": "fearful"}


def write_image_folder(root: Path, n_train: int = 40, n_test: int = 12, seed: int = 0) -> Path:
    for split, n, sd in (("train", n_train, seed), ("test", n_test, seed + 1)):
        for i, (label, img) in enumerate(make_samples(n, sd)):
            name = CLASSES[label]
            d = root / split / FOLDER_NAMES.get(name, name)
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{i:05d}.png"), img)
    return root


def write_fer_csv(path: Path, n_train: int = 30, n_val: int = 8, n_test: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for usage, n, sd in (
            ("Training", n_train, seed),
            ("PublicTest", n_val, seed + 1),
            ("PrivateTest", n_test, seed + 2),
        ):
            for label, img in make_samples(n, sd):
                w.writerow([label, " ".join(map(str, img.ravel().tolist())), usage])
    return path


def contact_sheet(path: Path, per_class: int = 6, seed: int = 0) -> Path:
    """A grid (rows = classes) for eyeballing the generator."""
    rng = np.random.default_rng(seed)
    rows = [np.hstack([draw_face(c, rng) for _ in range(per_class)]) for c in range(len(CLASSES))]
    sheet = cv2.resize(np.vstack(rows), None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), sheet)
    return path
