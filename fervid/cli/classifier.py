"""Training commands: `fervid train | evaluate | compare | export` (the comparative study's tools)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fervid.cli import LogLevelOption, Verbose, app, out, setup_logging
from fervid.errors import ConfigError, NotFound


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def train(ctx: typer.Context, log_level: LogLevelOption = None, verbose: Verbose = False) -> None:
    """Transfer-learn a model on FER-2013 (CSV or ImageFolder): --model NAME --data PATH --epochs N --out DIR.

    Every option of classifier/train.py (see `fervid train --help`): --weights imagenet|PATH|none,
    --freeze-epochs, --resume, --seed, ...
    """
    setup_logging(log_level, verbose)
    from classifier.train import main as train_main

    try:
        result = train_main(ctx.args)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    if result is not None:
        out.print(f"best val_accuracy {result.best_val_accuracy:.4f}; artefacts in {result.out_dir}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt written by `fervid train`.")],
    data: Annotated[Path, typer.Option(help="FER-2013 CSV or an ImageFolder root (train/, test/).")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    tta: Annotated[str, typer.Option(help="Test-time augmentation: none, flip or tencrop.")] = "none",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    log_level: LogLevelOption = None,
    verbose: Verbose = False,
) -> None:
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix of a checkpoint (JSON)."""
    setup_logging(log_level, verbose)
    from classifier.evaluate import evaluate_checkpoint

    if not checkpoint.is_file():
        raise NotFound(f"checkpoint {checkpoint} does not exist")
    try:
        result = evaluate_checkpoint(checkpoint, data, split=split, tta=tta, device=device)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ConfigError(str(exc)) from exc
    print(json.dumps(result.to_dict(), indent=2))


@app.command()
def compare(
    models: Annotated[str, typer.Option(help="Comma-separated registry names, e.g. densenet161,resnet152,vgg16.")],
    data: Annotated[Path, typer.Option(help="FER-2013 CSV or an ImageFolder root.")],
    epochs: Annotated[int, typer.Option(help="Epochs per model.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Output directory: one sub-directory per model + comparison.md.")
    ],
    weights: Annotated[str | None, typer.Option(help="imagenet, none or a PATH, for every model.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size for every model (default 64).")] = None,
    freeze_epochs: Annotated[int | None, typer.Option(help="Head-only epochs before the backbone is unfrozen.")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA (default on).")] = None,
    log_level: LogLevelOption = None,
    verbose: Verbose = False,
) -> None:
    """Train and evaluate several models on the same data; writes comparison.md and overlay curves."""
    setup_logging(log_level, verbose)
    from classifier.compare import compare as run_compare
    from classifier.train import TrainConfig

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ConfigError("--models is empty: give names such as densenet161,resnet152,vgg16")
    given = {
        k: v
        for k, v in dict(weights=weights, batch_size=batch_size, freeze_epochs=freeze_epochs, amp=amp).items()
        if v is not None
    }
    base = TrainConfig(model=names[0], data=str(data), out=str(out_dir), epochs=epochs, **given) if given else None  # type: ignore[arg-type]
    try:
        report = run_compare(names, data, epochs, out_dir, base=base)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    out.print(f"comparison written to {report}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt written by `fervid train`.")],
    onnx_path: Annotated[
        Path | None, typer.Option("--out", help="Where to write the .onnx (default: beside the checkpoint).")
    ] = None,
    log_level: LogLevelOption = None,
    verbose: Verbose = False,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch), checked against the PyTorch outputs."""
    setup_logging(log_level, verbose)
    from classifier.export import export_onnx

    if not checkpoint.is_file():
        raise NotFound(f"checkpoint {checkpoint} does not exist")
    target = onnx_path or checkpoint.with_suffix(".onnx")
    try:
        result = export_onnx(checkpoint, target)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    check = f"max |onnx - torch| = {result.max_abs_diff:.2e}" if result.max_abs_diff is not None else result.note
    out.print(f"wrote {result.path} ({check})")
