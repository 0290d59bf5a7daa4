"""Detector backends by name."""

from __future__ import annotations

import importlib
from typing import Any

from detector.base import FaceDetector

DETECTORS: dict[str, str] = {
    "mtcnn": "detector.mtcnn:MTCNNDetector",
}


def create_detector(name: str, **kwargs: Any) -> FaceDetector:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
    module, _, cls = DETECTORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)  # type: ignore[no-any-return]
