"""The fervid checkpoint format and its single loader.

A checkpoint is a plain dict of tensors, numbers, strings and lists so it loads with
`torch.load(weights_only=True)`: the serving worker never unpickles arbitrary objects.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from classifier.models import create_model

FORMAT = "fervid-classifier"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is malformed or does not match what the caller expects."""


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything needed to preprocess inputs for, and interpret outputs of, a checkpoint."""

    path: Path
    kind: str  # "best" (finished run) or "last" (resumable, possibly mid-run)
    model_name: str
    classes: tuple[str, ...]
    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    epoch: int
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def checkpoint_payload(
    *,
    kind: str,
    model: nn.Module,
    model_name: str,
    classes: Sequence[str],
    input_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    epoch: int,
    metrics: dict[str, Any],
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    sd = state_dict if state_dict is not None else model.state_dict()
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model_name": model_name,
        "classes": list(classes),
        "num_classes": len(classes),
        "input_size": int(input_size),
        "channels": int(channels),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "epoch": int(epoch),
        "metrics": metrics,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in sd.items()},
        **extra,
    }


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError) as exc:  # EOFError: an empty file
        if "Unsupported global" not in str(exc):
            raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch file") from exc
        # torch's own text is a page on weights_only; ours says what to do
        raise CheckpointError(
            f"{path} is not a fervid classifier checkpoint: it holds pickled objects, and fervid loads only the "
            "tensors and plain values that `fervid train` saves (a whole pickled model is never loaded: it could "
            "run code)"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fervid classifier checkpoint")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj.get('version')} unsupported (want {VERSION})")
    return obj


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    expect_model: str | None = None,
    expect_classes: Sequence[str] | None = None,
) -> tuple[nn.Module, CheckpointMeta]:
    """Load any fervid `best.pt` (or `last.pt`) into an eval-mode model plus its metadata.

    `expect_model` / `expect_classes` let a caller (e.g. a worker configured for one model)
    refuse a checkpoint of another architecture or label set with a clear error instead of a
    wall of state-dict key mismatches.
    """
    path = Path(path)
    obj = read_checkpoint(path)
    meta = checkpoint_meta(obj, path)
    if expect_model is not None and meta.model_name != expect_model:
        raise CheckpointError(f"{path} is a checkpoint of model {meta.model_name!r}, expected {expect_model!r}")
    if expect_classes is not None and tuple(expect_classes) != meta.classes:
        raise CheckpointError(f"{path} was trained on classes {list(meta.classes)}, expected {list(expect_classes)}")
    return checkpoint_model(obj, meta).to(device), meta


def checkpoint_meta(obj: dict[str, Any], path: Path) -> CheckpointMeta:
    """The metadata of a checkpoint read by :func:`read_checkpoint`."""
    try:
        return CheckpointMeta(
            path=path,
            kind=str(obj["kind"]),
            model_name=str(obj["model_name"]),
            classes=tuple(obj["classes"]),
            input_size=int(obj["input_size"]),
            channels=int(obj["channels"]),
            mean=tuple(obj["mean"]),
            std=tuple(obj["std"]),
            epoch=int(obj["epoch"]),
            metrics=dict(obj.get("metrics") or {}),
            config=dict(obj.get("config") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete ({exc!r})") from exc


def checkpoint_model(obj: dict[str, Any], meta: CheckpointMeta) -> nn.Module:
    """The registry's model for `meta`, with the checkpoint's weights, in eval mode (on the CPU)."""
    model = create_model(meta.model_name, num_classes=len(meta.classes))
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{meta.path}: weights do not fit model {meta.model_name!r}: {exc}") from exc
    return model.eval()


def make_preprocess(meta: CheckpointMeta, color: str = "bgr") -> Callable[[Sequence[np.ndarray]], torch.Tensor]:
    """Face crops (H, W) gray or (H, W, 3) uint8 in `color` order -> the (N, C, S, S) batch the
    checkpoint was evaluated on. Uses the very eval transform of training, so serving and the
    reported test accuracy see identical pixels."""
    from classifier.data import eval_transform  # local: data imports nothing from here, keep it so

    transform = eval_transform(meta.input_size, meta.channels, meta.mean, meta.std)
    code = {"bgr": cv2.COLOR_BGR2GRAY, "rgb": cv2.COLOR_RGB2GRAY}[color]

    def preprocess(crops: Sequence[np.ndarray]) -> torch.Tensor:
        images = []
        for crop in crops:
            gray = crop if crop.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(crop), code)
            images.append(transform(Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))))
        return torch.stack(images)

    return preprocess
