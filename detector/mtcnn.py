"""MTCNN backend (facenet-pytorch; its weights ship inside the wheel, so it works offline)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from detector.base import Detection
from fervid.device import resolve_device


class MTCNNDetector:
    name = "mtcnn"

    def __init__(
        self, device: str = "auto", min_face: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    ) -> None:
        from facenet_pytorch import MTCNN

        self.device = resolve_device(device)
        self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face, thresholds=list(thresholds), device=self.device)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        results: list[list[Detection]] = [[] for _ in images]
        # facenet-pytorch batches only images of one size: group by shape, one call per group.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            rgb = np.stack([images[i][:, :, ::-1] for i in indices])
            boxes, probs, points = self._mtcnn.detect(rgb, landmarks=True)
            for i, b, p, lm in zip(indices, boxes, probs, points, strict=True):
                results[i] = _to_detections(b, p, lm, images[i].shape)
        return results


def _to_detections(
    boxes: np.ndarray | None, probs: np.ndarray | None, points: np.ndarray | None, shape: tuple[int, ...]
) -> list[Detection]:
    if boxes is None or probs is None:
        return []
    h, w = shape[:2]
    out = []
    for k, (box, prob) in enumerate(zip(boxes, probs, strict=True)):
        x1, y1 = max(0.0, float(box[0])), max(0.0, float(box[1]))
        x2, y2 = min(float(w), float(box[2])), min(float(h), float(box[3]))
        if x2 <= x1 or y2 <= y1:
            continue
        lm = None if points is None else tuple((float(x), float(y)) for x, y in points[k])
        out.append(Detection(x1, y1, x2, y2, min(1.0, max(0.0, float(prob))), lm))
    out.sort(key=lambda d: d.score, reverse=True)
    return out
