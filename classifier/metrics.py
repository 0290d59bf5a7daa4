"""Classification metrics computed from predictions (no sklearn dependency for a few sums)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class ClassificationReport:
    classes: list[str]
    accuracy: float
    macro_f1: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    support: dict[str, int]
    confusion: list[list[int]]  # rows = true class, columns = predicted class
    num_samples: int

    def to_dict(self) -> dict:
        return asdict(self)

    def normalized_confusion(self) -> np.ndarray:
        cm = np.asarray(self.confusion, dtype=np.float64)
        rows = cm.sum(axis=1, keepdims=True)
        return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)

    def markdown_table(self) -> str:
        lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for c in self.classes:
            lines.append(
                f"| {c} | {self.precision[c]:.3f} | {self.recall[c]:.3f} | {self.f1[c]:.3f} | {self.support[c]} |"
            )
        return "\n".join(lines)


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    idx = targets.astype(np.int64) * num_classes + preds.astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(targets: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> ClassificationReport:
    k = len(classes)
    cm = confusion_matrix(np.asarray(targets), np.asarray(preds), k)
    tp = np.diag(cm).astype(np.float64)
    pred_n = cm.sum(axis=0).astype(np.float64)
    true_n = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, pred_n, out=np.zeros(k), where=pred_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros(k), where=true_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    # sklearn's macro average: over labels present in either targets or predictions, so a class
    # absent from a split neither helps nor hurts.
    present = (true_n + pred_n) > 0
    total = int(cm.sum())
    return ClassificationReport(
        classes=list(classes),
        accuracy=float(tp.sum() / total) if total else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        precision={c: float(v) for c, v in zip(classes, precision, strict=True)},
        recall={c: float(v) for c, v in zip(classes, recall, strict=True)},
        f1={c: float(v) for c, v in zip(classes, f1, strict=True)},
        support={c: int(v) for c, v in zip(classes, true_n, strict=True)},
        confusion=cm.tolist(),
        num_samples=total,
    )
