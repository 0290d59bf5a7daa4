"""The registry: names, lazy imports, clear errors, and every backend that can run offline."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from synth import astronaut_bgr

from detector.base import Detection
from detector.registry import DETECTORS, DetectorUnavailableError, create_detector
from detector.weights import WeightsError
from fervid.errors import ConfigError


def test_names():
    assert {"retinaface", "retinaface_resnet50", "haar", "mtcnn"} <= set(DETECTORS)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        create_detector("yolo")
    for name in DETECTORS:
        assert name in str(err.value)


def test_importing_registry_is_cheap():
    code = "import sys, detector.registry; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_an_unimportable_backend_is_a_clear_error(monkeypatch):
    from detector.registry import DetectorSpec

    monkeypatch.setitem(DETECTORS, "ghost", DetectorSpec("detector.no_such_module:Ghost"))
    with pytest.raises(DetectorUnavailableError, match=re.escape("detector.no_such_module:Ghost")):
        create_detector("ghost")


# retinaface_resnet50's real weights cannot be had offline: its loading path is tested with checkpoints the
# tests write (tests/test_retinaface.py), and its offline error here.
OFFLINE = sorted(set(DETECTORS) - {"retinaface_resnet50"})


def test_resnet50_offline_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("FERVID_OFFLINE", "1")
    monkeypatch.setenv("FERVID_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        create_detector("retinaface_resnet50")
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("name", OFFLINE)
def test_every_offline_backend_runs(name, monkeypatch):
    monkeypatch.setenv("FERVID_OFFLINE", "1")  # never download in tests
    det = create_detector(name)
    assert isinstance(det.name, str)
    images = [astronaut_bgr(), np.full((240, 320, 3), 127, np.uint8)]
    out = det.detect(images)
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(d, Detection) for dets in out for d in dets)
    assert len(out[0]) >= 1 and out[1] == []
