"""Every training option, defined once: `TrainConfig`'s fields are the Python API's arguments and, with their help
and bounds, `fervid train`'s and `fervid compare`'s options (the CLI builds its options from these fields).

Imports neither torch nor any other heavy module, so the CLI can read it while it builds its commands.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fervid.choices import ClassifierModel
from fervid.errors import ConfigError

# Names `weights` accepts besides a file: random init, torchvision's ImageNet weights, the registry's FER-2013 ones.
WEIGHTS_NAMES = ("none", "imagenet", "fer")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
TTA = Literal["none", "flip", "tencrop"]


@dataclass(frozen=True)
class Opt:
    """An option's help and bounds, read by `TrainConfig`'s validation and by the CLI."""

    help: str
    min: float | None = None
    max: float | None = None


@dataclass
class TrainConfig:
    """Every training option with its default; invalid values raise ConfigError at construction."""

    model: Annotated[ClassifierModel, Opt("Architecture, by registry name.")] = "vgg3"
    data: Annotated[
        str, Opt("FER-2013 CSV (emotion,pixels,Usage) or an ImageFolder root with train/ (val/) (test/).")
    ] = "fervid-data/fer2013"
    out: Annotated[str, Opt("Output directory of the run.")] = "out/train"
    epochs: Annotated[int, Opt("Epochs to train (at most: early stopping may end sooner).", min=1)] = 30
    batch_size: Annotated[int, Opt("Training batch size (evaluation uses twice this).", min=1)] = 64
    weights: Annotated[
        str,
        Opt("Start from: none (random init), imagenet, fer (FER-2013 weights of the registry) or a state-dict file."),
    ] = "none"
    input_size: Annotated[
        int | None,
        Opt("Input side in pixels (default: the model's own: 224 backbones, 48 vgg1-3, 64 mini_xception).", min=16),
    ] = None
    optimizer: Annotated[Literal["adamw", "sgd"], Opt("Optimizer.")] = "adamw"
    lr: Annotated[float, Opt("Peak learning rate of the head.", min=0.0)] = 1e-3
    momentum: Annotated[float, Opt("SGD momentum (sgd only).", min=0.0, max=1.0)] = 0.9
    weight_decay: Annotated[float, Opt("Weight decay.", min=0.0)] = 1e-4
    scheduler: Annotated[Literal["cosine", "onecycle", "none"], Opt("LR schedule, stepped per batch.")] = "cosine"
    warmup_epochs: Annotated[float, Opt("Linear warmup for cosine, in epochs.", min=0.0)] = 1.0
    min_lr_ratio: Annotated[float, Opt("Cosine floor, as a fraction of lr.", min=0.0, max=1.0)] = 0.01
    freeze_epochs: Annotated[int, Opt("Train only the head for this many epochs, then everything.", min=0)] = 0
    # Slowing a randomly initialised backbone would only slow learning, hence pretrained backbones only.
    backbone_lr_mult: Annotated[
        float, Opt("LR multiplier of the backbone once unfrozen; applied only with pretrained weights.", min=0.0)
    ] = 0.1
    class_weights: Annotated[bool, Opt("Inverse-frequency weighted loss (ignored with the weighted sampler).")] = True
    sampler: Annotated[Literal["random", "weighted"], Opt("weighted: class-balanced sampling.")] = "random"
    label_smoothing: Annotated[float, Opt("Label smoothing of the loss.", min=0.0, max=1.0)] = 0.1
    # PyTorch convention. Keras-converted mini_xception BNs use 0.01, whose running statistics lag hundreds of steps
    # behind weights trained from random init: the spec's scratch_bn_momentum fixes that when this is unset.
    bn_momentum: Annotated[
        float | None,
        Opt("BatchNorm momentum (default: the model's own; the spec's scratch value from random init).", min=0.0),
    ] = None
    # Worth it for short runs with few steps per epoch, where running averages lag the fast-moving weights
    # (mini_xception on a few hundred images: val at chance with lagging statistics, 0.71 after recalibration).
    precise_bn_batches: Annotated[
        int,
        Opt("Recompute BatchNorm statistics over this many training batches before each validation (0: off).", min=0),
    ] = 0
    amp: Annotated[bool, Opt("Mixed precision (CUDA only; ignored on the CPU).")] = True
    channels_last: Annotated[bool, Opt("channels_last memory format (CUDA only).")] = True
    patience: Annotated[int, Opt("Stop after this many epochs without a better val accuracy (0: never).", min=0)] = 10
    val_fraction: Annotated[
        float, Opt("Share of train carved (stratified) as val when the data has no val split.", min=0.0, max=0.9)
    ] = 0.1
    allow_missing_classes: Annotated[bool, Opt("Accept data in which some of the 7 classes have no image.")] = False
    seed: Annotated[int, Opt("Seed of the initialisation, sampling and the carved val split.")] = 0
    num_workers: Annotated[int, Opt("DataLoader worker processes.", min=0)] = 2
    device: Annotated[str, Opt(f"Device: {DEVICE_CHOICES}.")] = "auto"
    resume: Annotated[
        str | None, Opt("A run's last.pt: continue that run (its saved options win but epochs, device and I/O).")
    ] = None
    overwrite: Annotated[bool, Opt("Allow a fresh run into a directory that already holds one.")] = False
    progress: Annotated[bool, Opt("Batch progress bars.")] = True
    eval_tta: Annotated[TTA, Opt("Test-time augmentation of the final report.")] = "none"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_option(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_option(name: str, value: Any) -> None:
    """Raise ConfigError, naming what is valid, when `value` is not one `TrainConfig.<name>` accepts."""
    kind, opt = OPTIONS[name]
    choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else ()
    if choices and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    low, high = opt.min, opt.max
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and ((low is not None and value < low) or (high is not None and value > high)):
        bounds = " and ".join(b for b in (low is not None and f">= {low}", high is not None and f"<= {high}") if b)
        raise ConfigError(f"{name} must be {bounds}; got {value!r}")
    if name == "device" and not DEVICE_PATTERN.fullmatch(str(value)):
        raise ConfigError(f"device must be {DEVICE_CHOICES}; got {value!r}")


def check_weights_file(value: str) -> None:
    """Where the options are given (not on resume, which never reloads them): a weights path must exist."""
    if value not in WEIGHTS_NAMES and not Path(value).is_file():
        raise ConfigError(f"weights must be {', '.join(WEIGHTS_NAMES)} or an existing file; {value!r} is neither")


def _options() -> dict[str, tuple[Any, Opt]]:
    hints = typing.get_type_hints(TrainConfig, include_extras=True)
    return {name: typing.get_args(hint)[:2] for name, hint in hints.items()}


# Each field's type (Literal choices included) and its Opt, in field order: what the CLI builds options from.
OPTIONS: dict[str, tuple[Any, Opt]] = _options()
