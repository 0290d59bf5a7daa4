"""The names a user picks from: detector backends, devices, timeline labels.

They live in the spine, as Literals, so that settings and the CLI validate a name when they load or parse, and
``--help`` lists the valid ones, before any stage (or model) is imported. Each list is checked against the
registry it names by tests/test_choices.py.
"""

from __future__ import annotations

from typing import Literal

# detector.registry.DETECTORS
DetectorBackend = Literal["retinaface", "retinaface_resnet50", "mtcnn", "haar"]
# fervid.device.resolve_device: auto is CUDA when present, else the CPU.
Device = Literal["auto", "cpu", "cuda"]
# storage.timeline: count each face's own label, or its track's smoothed label.
TimelineLabels = Literal["raw", "smoothed"]
