"""Train one expression classifier, in the shape of torchvision's references/classification/train.py.

`train(TrainConfig(...)) -> TrainResult` reads top to bottom: `load_data`, `build_model`, then `run_epoch` until
the last epoch or early stopping (train_one_epoch, evaluate, checkpoint), then `finish` (the best weights evaluated,
every artefact written). The run's state lives in one `RunState`, which last.pt saves and --resume restores.
`fervid train` builds its options from `TrainConfig`'s fields (classifier/config.py) and calls `train()`.

Output directory layout (every file written atomically; `best.pt` is written last, so its presence means the run
finished and every other artefact is there):
    best.pt  last.pt  metrics.csv  metrics.json  curves.png  confusion_matrix.png  report.md  report.json  config.json
While it runs, `last.pt` (resumable), `metrics.csv` (a row per epoch: a crash loses nothing) and `config.json` (the
resolved options) are current, and the best weights so far live in DIR/.inprogress/best_state.pt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler, WeightedRandomSampler
from tqdm.auto import tqdm

from classifier import io
from classifier.checkpoint import CheckpointMeta, checkpoint_payload, read_checkpoint
from classifier.config import TrainConfig
from classifier.data import CLASSES, FaceDataset, Splits, eval_transform, load_splits, train_transform
from classifier.evaluate import evaluate_model_on, predict
from classifier.metrics import ClassificationReport
from classifier.models import create_model, get_spec, head_parameter_names
from classifier.plots import plot_confusion, plot_curves
from fervid.device import resolve_device

__all__ = ["RunState", "TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)

Echo = Callable[[str], None]  # where progress lines go: log.info by default, the terminal under `fervid train`

INPROGRESS = ".inprogress"
ARTEFACTS = (
    "best.pt",
    "metrics.json",
    "metrics.csv",
    "curves.png",
    "confusion_matrix.png",
    "report.md",
    "report.json",
    "config.json",
)
HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


@dataclass
class TrainResult:
    model: str
    out_dir: Path
    best_checkpoint: Path
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int  # last completed epoch (1-based)
    stopped_early: bool
    train_seconds: float
    test_accuracy: float | None
    history: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> str:
        test = "n/a (no test split)" if self.test_accuracy is None else f"{self.test_accuracy:.4f}"
        stop = ", stopped early" if self.stopped_early else ""
        return (
            f"{self.model}: best val accuracy {self.best_val_accuracy:.4f} at epoch {self.best_epoch} of "
            f"{self.epochs_run}{stop}; test accuracy {test}; trained {duration(self.train_seconds)}; "
            f"artefacts in {self.out_dir}"
        )


@dataclass
class Data:
    """The run's data: the splits (for the final report) and the loaders of the epochs."""

    splits: Splits
    train_loader: DataLoader
    val_loader: DataLoader
    loss_weight: torch.Tensor | None  # class weights of the loss; None when the sampler balances the classes


@dataclass
class RunState:
    """What a run carries from epoch to epoch: `checkpoint()` is last.pt, `restore()` is --resume."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    head_names: set[str]
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    meta: dict[str, Any]  # what a checkpoint records to rebuild and feed the model (name, classes, size, ...)
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    epoch: int = 0  # the last completed epoch
    best_acc: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since val accuracy last improved
    stopped_early: bool = False
    seconds_before: float = 0.0  # training time before a resume
    started: float = field(default_factory=time.perf_counter)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def staging(self) -> Path:
        return self.out / INPROGRESS

    @property
    def use_amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        return self.config.channels_last and self.device.type == "cuda"

    @property
    def train_seconds(self) -> float:
        return time.perf_counter() - self.started + self.seconds_before

    def record(self, epoch: int, losses: tuple[float, float, float, float], seconds: float) -> bool:
        """Append an epoch (train loss and accuracy, val loss and accuracy); True when its val accuracy is the
        best so far, whose weights are then kept in the staging directory."""
        row = (epoch, *losses, self.optimizer.param_groups[0]["lr"], seconds)
        for key, value in zip(HISTORY_KEYS, row, strict=True):
            self.history[key].append(value)
        self.epoch = epoch
        val_acc = losses[3]
        if val_acc <= self.best_acc:
            self.stale += 1
            return False
        self.best_acc, self.best_epoch, self.stale = val_acc, epoch, 0
        io.save_torch({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, self.staging / "best_state.pt")
        return True

    def checkpoint(self) -> dict[str, Any]:
        """last.pt: model, optimizer, scheduler, scaler, RNG, history and counters, with the options."""
        return checkpoint_payload(
            kind="last",
            model=self.model,
            epoch=self.epoch,
            config=self.config.to_dict(),
            metrics={"val_accuracy": self.history["val_accuracy"][-1], "val_loss": self.history["val_loss"][-1]},
            **self.meta,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.use_amp else {},
            rng=_rng_state(),
            history=self.history,
            best_val_accuracy=self.best_acc,
            best_epoch=self.best_epoch,
            epochs_without_improvement=self.stale,
            train_seconds=self.train_seconds,
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a last.pt: every state `checkpoint()` saved, and the best weights so far."""
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epoch = int(state["epoch"])
        self.best_acc, self.best_epoch = float(state["best_val_accuracy"]), int(state["best_epoch"])
        self.stale = int(state["epochs_without_improvement"])
        self.seconds_before = float(state.get("train_seconds", 0.0))
        log.info(
            "resumed %s after epoch %d (best val acc %.4f @ %d)", self.out, self.epoch, self.best_acc, self.best_epoch
        )
        best = self.out / "best.pt"
        if not (self.staging / "best_state.pt").is_file():
            # The resumed run had finished (staging cleared): its best weights live in best.pt.
            if not best.is_file():
                raise FileNotFoundError(f"cannot resume: neither {self.staging / 'best_state.pt'} nor {best} exists")
            io.save_torch(read_checkpoint(best)["state_dict"], self.staging / "best_state.pt")
        # From here the run is unfinished again: no best.pt may claim otherwise.
        best.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------


def train(config: TrainConfig, *, echo: Echo | None = None) -> TrainResult:
    """Train `config.model` on `config.data` into `config.out`; progress lines (one per epoch) go to `echo`."""
    config, resume_state = _resolve_config(config)
    out = Path(config.out)
    _check_out_dir(out, config)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data = load_data(config, device)
    run = build_model(config, data, device, pretrained=resume_state is None)
    # Data and weights have loaded: only now may a previous run in `out` be cleared, so a typo destroys nothing.
    _prepare_out_dir(out, config)
    if resume_state is not None:
        run.restore(resume_state)
    io.write_json(out / "config.json", config.to_dict())
    while run.epoch < config.epochs and not run.stopped_early:
        run_epoch(run, data, echo or log.info)
    return finish(run, data)


def load_data(config: TrainConfig, device: torch.device) -> Data:
    """The splits, and loaders with the model's transforms; class imbalance is met by the sampler or the loss."""
    spec = get_spec(config.model)
    splits = load_splits(
        config.data,
        val_fraction=config.val_fraction,
        seed=config.seed,
        allow_missing_classes=config.allow_missing_classes,
    )
    tf_args = (config.input_size or spec.input_size, spec.channels, spec.mean, spec.std)
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
        dict(zip(CLASSES, counts.tolist(), strict=True)),
    )
    sampler: Sampler[int]
    if config.sampler == "weighted":
        if config.class_weights:
            log.info("sampler=weighted already balances classes; class-weighted loss disabled")
        sample_w = class_weight_tensor(counts)[torch.from_numpy(splits.train.targets)]
        sampler = WeightedRandomSampler(sample_w.double().tolist(), num_samples=len(train_ds), replacement=True)
        loss_weight = None
    else:
        sampler = RandomSampler(train_ds)
        loss_weight = class_weight_tensor(counts).to(device) if config.class_weights else None
    loader_kw: dict[str, Any] = {
        "num_workers": config.num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": config.num_workers > 0,
    }
    # drop_last keeps BatchNorm away from a trailing batch of one sample.
    drop_last = len(train_ds) > config.batch_size
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler, drop_last=drop_last, **loader_kw)
    val_loader = DataLoader(val_ds, batch_size=config.batch_size * 2, shuffle=False, **loader_kw)
    return Data(splits, train_loader, val_loader, loss_weight)


def build_model(config: TrainConfig, data: Data, device: torch.device, *, pretrained: bool) -> RunState:
    """The model (with `config.weights` unless resuming, which restores its own), loss, optimizer and schedule."""
    spec = get_spec(config.model)
    model = create_model(config.model, num_classes=len(CLASSES), weights=config.weights if pretrained else "none")
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
    on_cuda = device.type == "cuda"
    model.to(device)
    if config.channels_last and on_cuda:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, head, backbone)
    meta = {"model_name": config.model, "classes": CLASSES, **spec.input_format(config.input_size)}
    return RunState(
        config=config,
        device=device,
        model=model,
        head_names=head_names,
        criterion=nn.CrossEntropyLoss(weight=data.loss_weight, label_smoothing=config.label_smoothing),
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config, len(data.train_loader)),
        scaler=torch.amp.GradScaler(device.type, enabled=config.amp and on_cuda),
        meta=meta,
    )


def run_epoch(run: RunState, data: Data, echo: Echo) -> None:
    """One epoch: train, validate, record, write last.pt and metrics.csv; patience may stop the run."""
    epoch = run.epoch + 1
    config = run.config
    frozen = epoch <= config.freeze_epochs
    set_backbone_frozen(run.model, run.head_names, frozen)
    started = time.perf_counter()
    train_loss, train_acc = train_one_epoch(run, data.train_loader, epoch, frozen=frozen)
    if config.precise_bn_batches > 0:
        recalibrate_bn(run.model, data.train_loader, config.precise_bn_batches, run.device)
    val_loss, val_acc = evaluate(run.model, data.val_loader, run.device, len(CLASSES))
    best = run.record(epoch, (train_loss, train_acc, val_loss, val_acc), time.perf_counter() - started)
    io.save_torch(run.checkpoint(), run.out / "last.pt")
    io.write_csv(run.out / "metrics.csv", HISTORY_KEYS, zip(*(run.history[k] for k in HISTORY_KEYS), strict=True))
    echo(epoch_line(run, frozen=frozen, best=best))
    if config.patience > 0 and run.stale >= config.patience:
        run.stopped_early = True
        echo(f"early stop after epoch {epoch}: no val accuracy gain for {run.stale} epochs")


def epoch_line(run: RunState, *, frozen: bool, best: bool) -> str:
    """`epoch 3/30: train loss 1.2345 acc 0.4567 | val loss 1.1234 acc 0.5678 (best) | 12.3 s, ETA 5m 30s`."""
    h = run.history
    recent = h["seconds"][-3:]  # the latest epochs: head-only ones run faster than full ones
    eta = sum(recent) / len(recent) * (run.config.epochs - run.epoch)
    return (
        f"epoch {run.epoch}/{run.config.epochs}{' (head only)' if frozen else ''}: "
        f"train loss {h['train_loss'][-1]:.4f} acc {h['train_accuracy'][-1]:.4f} | "
        f"val loss {h['val_loss'][-1]:.4f} acc {h['val_accuracy'][-1]:.4f}{' (best)' if best else ''} | "
        f"{h['seconds'][-1]:.1f} s, ETA {duration(eta)}"
    )


def finish(run: RunState, data: Data) -> TrainResult:
    """Reload the best weights, evaluate them, write every artefact, and best.pt last."""
    if run.best_epoch == 0:
        raise RuntimeError("no epoch completed; nothing to save")
    best_state = torch.load(run.staging / "best_state.pt", map_location="cpu", weights_only=True)
    run.model.load_state_dict(best_state)
    run.model.to(run.device).eval()
    reports = _final_reports(run, data.splits)
    train_seconds = run.train_seconds
    test_accuracy = reports["test"].accuracy if "test" in reports else None
    metrics = {
        "model": run.config.model,
        **run.history,
        "best_val_accuracy": run.best_acc,
        "best_epoch": run.best_epoch,
        "epochs_run": run.epoch,
        "stopped_early": run.stopped_early,
        "train_seconds": train_seconds,
        "freeze_epochs": run.config.freeze_epochs,
        # Final evaluation of the best weights (history keys above are per-epoch lists).
        "final": {
            s: {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "split_size": r.num_samples} for s, r in reports.items()
        },
        "test_accuracy": test_accuracy,
    }
    _write_reports(run, data.splits, reports, metrics)
    io.save_torch(
        checkpoint_payload(
            kind="best",
            model=run.model,
            epoch=run.best_epoch,
            config=run.config.to_dict(),
            metrics={k: v for k, v in metrics.items() if not isinstance(v, list)},
            state_dict=best_state,
            **run.meta,
        ),
        run.out / "best.pt",
    )
    shutil.rmtree(run.staging, ignore_errors=True)
    return TrainResult(
        model=run.config.model,
        out_dir=run.out,
        best_checkpoint=run.out / "best.pt",
        best_val_accuracy=run.best_acc,
        best_epoch=run.best_epoch,
        epochs_run=run.epoch,
        stopped_early=run.stopped_early,
        train_seconds=train_seconds,
        test_accuracy=test_accuracy,
        history=run.history,
    )


def _final_reports(run: RunState, splits: Splits) -> dict[str, ClassificationReport]:
    meta = CheckpointMeta(path=run.out / "best.pt", kind="best", epoch=run.best_epoch, **run.meta)
    return {
        split: evaluate_model_on(
            run.model, meta, splits, split, run.config.eval_tta, run.device, batch_size=run.config.batch_size * 2
        )
        for split in ("val", "test")
        if getattr(splits, split) is not None
    }


def _write_reports(
    run: RunState, splits: Splits, reports: dict[str, ClassificationReport], metrics: dict[str, Any]
) -> None:
    """metrics.json, config.json, report.json, report.md, curves.png and confusion_matrix.png."""
    name, out = run.config.model, run.out
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "config.json", run.config.to_dict())
    io.write_json(out / "report.json", {s: r.to_dict() for s, r in reports.items()})
    md = [
        f"# {name} — classification report",
        "",
        f"Data: `{splits.source}`; best epoch {run.best_epoch} (val accuracy {run.best_acc:.4f}); "
        f"TTA {run.config.eval_tta}.",
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
        run.history,
        out / "curves.png",
        title=f"{name}: train vs val",
        best_epoch=run.best_epoch,
        freeze_epochs=run.config.freeze_epochs,
    )
    main_split = "test" if "test" in reports else "val"
    main = reports[main_split]
    plot_confusion(
        main.normalized_confusion(),
        main.classes,
        out / "confusion_matrix.png",
        title=f"{name} on {main_split} (acc {main.accuracy:.3f}, row-normalized)",
    )


def duration(seconds: float) -> str:
    """42 s, 5m 30s, 2h 05m."""
    s = round(seconds)
    if s < 60:
        return f"{seconds:.0f} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


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
            "pass --overwrite, or --resume DIR/last.pt"
        )


def _prepare_out_dir(out: Path, config: TrainConfig) -> None:
    """Clear a previous run (overwrite) and create the staging dir."""
    staging = out / INPROGRESS
    if not config.resume:
        # best.pt first: if we crash while clearing, no stale "finished" marker remains.
        for n in (*ARTEFACTS, "last.pt"):
            (out / n).unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True: the (name, keys, pos, has_gauss, cached) tuple
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


def train_one_epoch(run: RunState, loader: DataLoader, epoch: int, *, frozen: bool) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss, accuracy) on augmented batches."""
    model, device = run.model, run.device
    model.train()
    if frozen:
        _freeze_bn_stats(model)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch} train", disable=not run.config.progress, leave=False)
    for x, y in bar:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, enabled=run.use_amp):
            logits = model(x)
            loss = run.criterion(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}: loss became {loss.item()}; lower the lr?")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
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
