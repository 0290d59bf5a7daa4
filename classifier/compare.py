"""Train several architectures on the same data and compare them (the original study)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from classifier import io
from classifier.checkpoint import load_checkpoint
from classifier.data import load_splits
from classifier.evaluate import evaluate_checkpoint
from classifier.models import count_parameters
from classifier.plots import plot_overlay
from classifier.train import TrainConfig, train


@torch.inference_mode()
def throughput(
    model: torch.nn.Module,
    input_size: int,
    channels: int,
    device: torch.device,
    batch_size: int = 16,
    seconds: float = 1.0,
) -> float:
    """Inference images/s at batch_size (after one warm-up batch), measured for ~`seconds`."""
    model = model.to(device).eval()
    x = torch.randn(batch_size, channels, input_size, input_size, device=device)
    model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while True:
        model(x)
        n += batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - t0 >= seconds:
            break
    return n / (time.perf_counter() - t0)


def compare(
    models: Sequence[str],
    data: str | Path,
    epochs: int,
    out: str | Path,
    *,
    base: TrainConfig | None = None,
    throughput_seconds: float = 1.0,
) -> Path:
    """Train each model into out/<model>/, evaluate on test; returns out/comparison.md.

    `base` carries every other training option (batch size, lr, weights, ...).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = base or TrainConfig()
    splits = load_splits(
        data, val_fraction=base.val_fraction, seed=base.seed, allow_missing_classes=base.allow_missing_classes
    )
    split = "test" if splits.test is not None else "val"
    rows: list[dict[str, Any]] = []
    histories: dict[str, dict[str, list[float]]] = {}
    for name in models:
        cfg = dataclasses.replace(base, model=name, data=str(data), epochs=epochs, out=str(out / name), resume=None)
        result = train(cfg)
        ev = evaluate_checkpoint(result.best_checkpoint, splits, split=split, tta=base.eval_tta)
        model, meta = load_checkpoint(result.best_checkpoint)
        speeds = {
            "cpu": throughput(model, meta.input_size, meta.channels, torch.device("cpu"), seconds=throughput_seconds)
        }
        if torch.cuda.is_available():
            speeds["cuda"] = throughput(
                model, meta.input_size, meta.channels, torch.device("cuda"), batch_size=64, seconds=throughput_seconds
            )
        histories[name] = result.history
        rows.append(
            {
                "model": name,
                "split": split,
                "accuracy": ev.accuracy,
                "macro_f1": ev.macro_f1,
                "recall": ev.recall,
                "parameters": count_parameters(model),
                "train_seconds": result.train_seconds,
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best_val_accuracy,
                "input_size": meta.input_size,
                "images_per_second": speeds,
                "checkpoint": str(result.best_checkpoint),
            }
        )
    io.write_json(out / "comparison.json", {"data": str(data), "epochs": epochs, "split": split, "models": rows})
    plot_overlay(histories, out / "curves_overlay.png", title=f"{len(models)} models, {epochs} epochs")
    classes = list(rows[0]["recall"]) if rows else []
    md = [
        f"# Model comparison on `{data}` ({split} split, {epochs} epochs max)",
        "",
        "| model | accuracy | macro-F1 | params | input | train time (s) | img/s CPU | img/s GPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: -r["accuracy"]):
        gpu = r["images_per_second"].get("cuda")
        md.append(
            f"| {r['model']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['parameters'] / 1e6:.2f}M | "
            f"{r['input_size']} | {r['train_seconds']:.1f} | {r['images_per_second']['cpu']:.0f} | "
            f"{'n/a' if gpu is None else f'{gpu:.0f}'} |"
        )
    md += ["", "## Per-class recall", "", "| model | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for r in rows:
        md.append(f"| {r['model']} | " + " | ".join(f"{r['recall'][c]:.3f}" for c in classes) + " |")
    md += [
        "",
        "Throughput: batch 16 on CPU, 64 on GPU, after one warm-up batch.",
        "",
        "![validation curves](curves_overlay.png)",
        "",
    ]
    path = out / "comparison.md"
    io.write_text(path, "\n".join(md))
    return path
