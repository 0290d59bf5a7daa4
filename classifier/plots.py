"""Training figures. Agg backend: training runs on headless servers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from classifier.io import atomic_path


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_curves(
    history: Mapping[str, Sequence[float]],
    path: Path,
    *,
    title: str,
    best_epoch: int | None = None,
    freeze_epochs: int = 0,
) -> None:
    """Loss and accuracy, train vs val, one panel each."""
    epochs = list(history["epoch"])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, history[f"train_{key}"], "o-", label=f"train {label} (augmented, dropout on)", color="tab:blue")
        ax.plot(epochs, history[f"val_{key}"], "s-", label=f"val {label}", color="tab:orange")
        if freeze_epochs > 0:
            ax.axvspan(0.5, freeze_epochs + 0.5, color="grey", alpha=0.12, label="head only (frozen backbone)")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(epochs) < 20:
            ax.set_xticks(epochs)
    ax_acc.set_ylim(0, 1)
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    fig.suptitle(title)
    _save(fig, path)


def plot_confusion(normalized: np.ndarray, classes: Sequence[str], path: Path, *, title: str) -> None:
    """Row-normalized confusion matrix (rows = true class, so the diagonal is recall)."""
    k = len(classes)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            v = normalized[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v > 0.5 else "black")
    ax.set_title(title)
    _save(fig, path)


def plot_overlay(histories: Mapping[str, Mapping[str, Sequence[float]]], path: Path, *, title: str) -> None:
    """Val accuracy and val loss per model on shared axes."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, h in histories.items():
        ax_acc.plot(h["epoch"], h["val_accuracy"], "o-", label=name)
        ax_loss.plot(h["epoch"], h["val_loss"], "o-", label=name)
    ax_acc.set_title("val accuracy")
    ax_acc.set_ylim(0, 1)
    ax_loss.set_title("val loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
