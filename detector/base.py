"""The face-detector backend interface: every backend turns a batch of BGR frames into boxes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One face in one frame, in that frame's pixel coordinates."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    # Five (x, y) facial landmarks (eyes, nose, mouth corners) where the backend gives them.
    landmarks: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError(f"Detection box must have x2 > x1 and y2 > y1, got {self.box}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Detection score must be in [0, 1], got {self.score}")

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


class FaceDetector(Protocol):
    """A backend. `detect` takes a batch (frames may differ in size) and returns one list per frame."""

    name: str

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """`images`: BGR uint8 arrays of shape (H, W, 3). Returns detections per image, best score first."""
        ...
