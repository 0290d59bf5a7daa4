"""The registry: names, lazy imports, clear errors, and every backend that can run offline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from detector.base import Detection
from detector.registry import DETECTORS, DetectorUnavailableError, create_detector
from detector.weights import WeightsError
from synth import astronaut_bgr


def test_names():
    assert {"retinaface", "retinaface_resnet50", "haar", "mtcnn"} <= set(DETECTORS)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as err:
        create_detector("yolo")
    for name in DETECTORS:
        assert name in str(err.value)


def test_importing_registry_is_cheap():
    code = "import sys, detector.registry; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_mtcnn_missing_is_a_clear_error():
    try:
        import detector.mtcnn  # noqa: F401
    except ImportError:
        with pytest.raises(DetectorUnavailableError, match="detector.mtcnn:MTCNNDetector"):
            create_detector("mtcnn")
    else:
        pytest.skip("detector.mtcnn exists on this branch")


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_offline_backend_runs(name, monkeypatch):
    monkeypatch.setenv("FERVID_OFFLINE", "1")  # never download in tests
    try:
        det = create_detector(name)
    except (DetectorUnavailableError, WeightsError) as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"{name} not available offline: {exc}")
    assert isinstance(det.name, str)
    images = [astronaut_bgr(), np.full((240, 320, 3), 127, np.uint8)]
    out = det.detect(images)
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(d, Detection) for dets in out for d in dets)
    assert len(out[0]) >= 1 and out[1] == []
