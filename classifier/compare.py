"""Train several architectures on the same data and compare them (the original study)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from classifier import io
from classifier.checkpoint import load_checkpoint
from classifier.config import TTA
from classifier.data import Splits, load_splits
from classifier.evaluate import evaluate_checkpoint
from classifier.models import count_parameters, get_spec
from classifier.plots import plot_overlay
from classifier.train import Echo, TrainConfig, TrainResult, duration, train
from fervid.choices import ClassifierModel
from fervid.errors import ConfigError

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Comparison:
    report: Path  # comparison.md
    split: str  # the split the models were ranked on
    best_model: str
    best_accuracy: float
    models: int
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.models} model(s) compared in {duration(self.seconds)}: best {self.best_model} "
            f"({self.split} accuracy {self.best_accuracy:.4f}); report {self.report}"
        )


def compare(
    models: Sequence[ClassifierModel],
    data: str | Path,
    epochs: int,
    out: str | Path,
    *,
    base: TrainConfig | None = None,
    throughput_seconds: float = 1.0,
    echo: Echo | None = None,
) -> Comparison:
    """Train each model into out/<model>/, evaluate on test; writes out/comparison.md and .json.

    `base` carries every other training option (batch size, lr, weights, ...). Progress lines (model k of n, then
    each epoch) go to `echo`.
    """
    say = echo or log.info
    if not models:
        raise ConfigError("no models to compare: give names such as densenet161,resnet152,vgg16")
    for name in models:
        get_spec(name)  # a typo in the third name fails now, not hours from now
    base = base or TrainConfig()
    splits = load_splits(
        data, val_fraction=base.val_fraction, seed=base.seed, allow_missing_classes=base.allow_missing_classes
    )
    out = Path(out)  # created only once the data has loaded: a typo leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    split = "test" if splits.test is not None else "val"
    rows: list[dict[str, Any]] = []
    histories: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    for k, name in enumerate(models, start=1):
        say(f"model {k} of {len(models)}: {name}")
        cfg = dataclasses.replace(base, model=name, data=str(data), epochs=epochs, out=str(out / name), resume=None)
        result = train(cfg, echo=_prefixed(say, f"[{k}/{len(models)} {name}] "))
        histories[name] = result.history
        rows.append(_measure(result, splits, split, base.eval_tta, throughput_seconds))
        say(f"model {k} of {len(models)}: {result.summary()}")
    io.write_json(out / "comparison.json", {"data": str(data), "epochs": epochs, "split": split, "models": rows})
    plot_overlay(histories, out / "curves_overlay.png", title=f"{len(models)} models, {epochs} epochs")
    path = out / "comparison.md"
    io.write_text(path, _markdown(rows, data, split, epochs))
    best = max(rows, key=lambda r: r["accuracy"])
    return Comparison(path, split, best["model"], best["accuracy"], len(rows), time.perf_counter() - started)


def _markdown(rows: list[dict[str, Any]], data: str | Path, split: str, epochs: int) -> str:
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
    return "\n".join(md)


def _prefixed(echo: Echo, prefix: str) -> Echo:
    return lambda line: echo(prefix + line)


def _measure(result: TrainResult, splits: Splits, split: str, tta: TTA, throughput_seconds: float) -> dict[str, Any]:
    """One model's row of the comparison: accuracy on `split`, size, training time and inference speed."""
    ev = evaluate_checkpoint(result.best_checkpoint, splits, split=split, tta=tta)
    model, meta = load_checkpoint(result.best_checkpoint)
    speeds = {"cpu": throughput(model, meta.input_size, meta.channels, torch.device("cpu"), seconds=throughput_seconds)}
    if torch.cuda.is_available():
        speeds["cuda"] = throughput(
            model, meta.input_size, meta.channels, torch.device("cuda"), batch_size=64, seconds=throughput_seconds
        )
    return {
        "model": result.model,
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
