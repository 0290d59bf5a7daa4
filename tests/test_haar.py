"""Haar cascade backend on real pixels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from synth import ASTRONAUT_FACE, astronaut_bgr, iou, match, standard_frames

from detector.base import Detection
from detector.haar import HaarDetector, weight_to_score


@pytest.fixture(scope="module")
def det() -> HaarDetector:
    return HaarDetector()


def test_astronaut(det):
    (faces,) = det.detect([astronaut_bgr()])
    assert len(faces) >= 1
    assert isinstance(faces[0], Detection) and faces[0].landmarks is None
    assert iou(faces[0].box, ASTRONAUT_FACE) >= 0.5
    assert 0.0 <= faces[0].score <= 1.0


def test_recall_on_synthetic_frames(det):
    frames = standard_frames()
    results = det.detect([f.image for f in frames])
    for frame, dets in zip(frames, results, strict=True):
        found, ious = match(frame.boxes, dets)
        assert found == len(frame.boxes), ious
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_blank_frame(det):
    assert det.detect([np.full((480, 640, 3), 127, np.uint8)]) == [[]]


def test_score_mapping_is_monotonic_and_bounded():
    ws = np.linspace(-50, 50, 201)
    s = [weight_to_score(w) for w in ws]
    assert all(0.0 <= v <= 1.0 for v in s) and all(a <= b for a, b in itertools.pairwise(s))
    assert weight_to_score(1e9) == 1.0 and weight_to_score(-1e9) >= 0.0
