"""Detector registry: `create_detector(name, **kwargs)`. Backends are imported only when created, so importing this
module is cheap (no torch, no OpenCV)."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from detector.base import FaceDetector
from fervid.errors import ConfigError


@dataclass(frozen=True)
class DetectorSpec:
    target: str  # "package.module:ClassName"
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


DETECTORS: dict[str, DetectorSpec] = {
    "retinaface": DetectorSpec(
        "detector.retinaface:RetinaFaceDetector",
        {"backbone": "mobilenet0.25"},
        "RetinaFace MobileNetV1-0.25 (biubug6), bundled weights, batched",
    ),
    "retinaface_resnet50": DetectorSpec(
        "detector.retinaface:RetinaFaceDetector",
        {"backbone": "resnet50"},
        "RetinaFace ResNet50 (retinaface-pytorch weights: downloaded once into the weights cache, or weights=PATH)",
    ),
    "haar": DetectorSpec("detector.haar:HaarDetector", {}, "OpenCV Haar cascade (frontal face), CPU, per-frame loop"),
    "mtcnn": DetectorSpec("detector.mtcnn:MTCNNDetector", {}, "MTCNN (facenet-pytorch)"),
}


class DetectorUnavailableError(ConfigError):
    """A registered backend whose implementation cannot be imported in this installation."""


def _load(name: str, spec: DetectorSpec) -> type:
    module_name, _, attr = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DetectorUnavailableError(
            f"Detector {name!r} is registered as {spec.target} but it cannot be imported here ({exc})."
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise DetectorUnavailableError(f"Detector {name!r}: module {module_name} has no {attr}.") from exc


def create_detector(name: str, **kwargs: Any) -> FaceDetector:
    """Build the backend registered as `name`; `kwargs` override its defaults."""
    try:
        spec = DETECTORS[name]
    except KeyError:
        raise ConfigError(f"unknown detector {name!r}: use one of {', '.join(sorted(DETECTORS))}") from None
    cls = _load(name, spec)
    return cls(**{**spec.defaults, **kwargs})


def create_configured(
    name: str, *, device: str = "auto", min_face: int | None = None, weights: str | None = None
) -> FaceDetector:
    """`create_detector` with fervid's common options; a backend without such an option (Haar has no device)
    simply does not receive it."""
    accepted = inspect.signature(_load(name, DETECTORS[name]) if name in DETECTORS else object).parameters
    options = {"device": device, "min_face": min_face, "weights": weights}
    return create_detector(name, **{k: v for k, v in options.items() if v is not None and k in accepted})
