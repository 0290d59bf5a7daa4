"""Evaluate a checkpoint on a dataset split, optionally with test-time augmentation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from classifier.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint
from classifier.config import TTA
from classifier.data import CLASSES, FaceDataset, Splits, eval_transform, load_splits, tencrop_transform
from classifier.metrics import ClassificationReport, classification_report
from fervid.device import resolve_device

__all__ = ["EvalResult", "evaluate_checkpoint", "load_checkpoint", "predict", "resolve_device"]


@dataclass
class EvalResult(ClassificationReport):
    """A checkpoint's classification report on one split, with what was evaluated and how."""

    checkpoint: str
    model_name: str
    split: str
    tta: str


@torch.inference_mode()
def predict(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, tta: TTA = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K), targets (N,)). For "tencrop" batches are (B, 10, C, H, W)."""
    model.eval()
    outs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        if tta == "tencrop":
            b, n = x.shape[:2]
            logits = model(x.flatten(0, 1)).view(b, n, -1).mean(1)
        elif tta == "flip":
            # Faces are near-symmetric: averaging with the mirror costs one pass, steadies output.
            logits = (model(x) + model(torch.flip(x, dims=[-1]))) / 2
        else:
            logits = model(x)
        outs.append(logits.float().cpu())
        targets.append(torch.as_tensor(y))
    if not outs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(outs).numpy(), torch.cat(targets).numpy()


def evaluate_checkpoint(
    ckpt: str | Path,
    data: str | Path | Splits,
    split: str = "test",
    tta: TTA = "none",
    *,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    expect_model: str | None = None,
) -> EvalResult:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
    if tta not in ("none", "flip", "tencrop"):
        raise ValueError(f"tta must be none, flip or tencrop; got {tta!r}")
    dev = resolve_device(device)
    model, meta = load_checkpoint(ckpt, device=dev, expect_model=expect_model)
    splits = data if isinstance(data, Splits) else load_splits(data, seed=int(meta.config.get("seed", 0)))
    if tuple(splits.classes) != meta.classes:
        raise CheckpointError(
            f"{ckpt} was trained on classes {list(meta.classes)} but the dataset has {list(splits.classes)}"
        )
    report = evaluate_model_on(model, meta, splits, split, tta, dev, batch_size=batch_size, num_workers=num_workers)
    return EvalResult(**vars(report), checkpoint=str(ckpt), model_name=meta.model_name, split=split, tta=tta)


def evaluate_model_on(
    model: nn.Module,
    meta: CheckpointMeta,
    splits: Splits,
    split: str,
    tta: TTA,
    device: torch.device,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
) -> ClassificationReport:
    args = (meta.input_size, meta.channels, meta.mean, meta.std)
    transform = tencrop_transform(*args) if tta == "tencrop" else eval_transform(*args)
    loader = DataLoader(
        FaceDataset(splits.get(split), transform), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    logits, targets = predict(model, loader, device, tta)
    preds = logits.argmax(1) if len(logits) else np.zeros(0, dtype=np.int64)
    return classification_report(targets, preds, list(meta.classes or CLASSES))
