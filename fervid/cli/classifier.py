"""Training commands: `fervid train | evaluate | compare | export` (the comparative study's tools).

`train` and `compare` take every field of `classifier.config.TrainConfig` as an option, built from the field's type,
default, help and bounds: the options are defined once, there. They are built when the CLI builds its commands,
not when `fervid.cli` is imported, so fervid still imports no stage at import time.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from fervid.choices import CLASSIFIER_MODELS, ClassifierModel
from fervid.cli import app, command, console, out, setup_logging
from fervid.cli.options import LogLevelOption, Verbose
from fervid.errors import ConfigError, NotFound

Split = Literal["train", "val", "test"]
TTA = Literal["none", "flip", "tencrop"]  # classifier.config.TTA, spelled here for --help (a test keeps them equal)


class _ConfigOptions:
    """A command callback whose options are `extra`, TrainConfig's fields (but `skip`), then --log-level and -v.

    Typer reads a callback's options from its signature; this one builds that signature from classifier/config.py
    on demand (torch-free), so the options are defined once and `import fervid.cli` stays free of stages.
    """

    def __init__(
        self,
        run: Callable[..., None],
        extra: list[inspect.Parameter],
        *,
        skip: frozenset[str] = frozenset(),
        helps: dict[str, str] | None = None,
    ) -> None:
        self._run, self._extra, self._skip, self._helps = run, extra, skip, helps or {}
        self.__annotations__: dict[str, Any] = {}  # typer resolves hints through this; the signature carries them

    @property
    def __signature__(self) -> inspect.Signature:
        from classifier.config import OPTIONS, TrainConfig

        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        options = [
            _parameter(name, Annotated[kind, self._option(name, opt.help, opt.min, opt.max)], defaults[name])
            for name, (kind, opt) in OPTIONS.items()
            if name not in self._skip
        ]
        logging = [_parameter("log_level", LogLevelOption, None), _parameter("verbose", Verbose, False)]
        return inspect.Signature([*self._extra, *options, *logging])

    def _option(self, name: str, help: str, low: float | None, high: float | None) -> Any:
        return typer.Option(help=self._helps.get(name, help), min=low, max=high, callback=_check(name))

    def __call__(self, **options: Any) -> None:
        self._run(**options)


def _parameter(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _check(name: str) -> Callable[[Any], Any]:
    """A parse-time check of one option, by TrainConfig's own rules: a bad value is a usage error."""

    def check(value: Any) -> Any:
        from classifier.config import check_option, check_weights_file

        try:
            check_option(name, value)
            if name == "weights":
                check_weights_file(value)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from None
        return value

    return check


def _check_models(value: str) -> list[ClassifierModel]:
    names = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [n for n in names if n not in CLASSIFIER_MODELS]
    if unknown or not names:
        raise typer.BadParameter(f"{', '.join(unknown) or 'none given'}: choose from {', '.join(CLASSIFIER_MODELS)}")
    return typing.cast("list[ClassifierModel]", names)


def _echo(line: str) -> None:
    typer.echo(line, err=True)


@contextmanager
def _training_errors(run_dir: Path | None = None) -> Iterator[None]:
    """What a user can fix becomes one line; an interrupted run says how to resume it."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from exc
    except KeyboardInterrupt:
        if run_dir is not None and (run_dir / "last.pt").is_file():
            console.print(f"interrupted: continue with `fervid train --resume {run_dir / 'last.pt'}`", highlight=False)
        raise


def _train(log_level: Any, verbose: bool, **options: Any) -> None:
    from classifier.config import TrainConfig
    from classifier.train import train as run_train

    setup_logging(log_level, verbose)
    config = TrainConfig(**options)
    with _training_errors(Path(config.resume).parent if config.resume else Path(config.out)):
        result = run_train(config, echo=_echo)
    out.print(result.summary(), highlight=False, soft_wrap=True)


def _compare(log_level: Any, verbose: bool, models: list[ClassifierModel], **options: Any) -> None:
    from classifier.compare import compare as run_compare
    from classifier.config import TrainConfig

    setup_logging(log_level, verbose)
    base = TrainConfig(model=models[0], **options)
    with _training_errors():
        comparison = run_compare(models, base.data, base.epochs, base.out, base=base, echo=_echo)
    out.print(comparison.summary(), highlight=False, soft_wrap=True)


app.command(
    "train",
    help="Transfer-learn a model on FER-2013 (CSV or ImageFolder): per-epoch lines, then a one-line summary. "
    "Resume an interrupted run with --resume DIR/last.pt.",
)(_ConfigOptions(_train, []))

app.command(
    "compare",
    help="Train and evaluate several models on the same data (every training option applies to each); "
    "writes comparison.md, comparison.json and overlay curves.",
)(
    _ConfigOptions(
        _compare,
        [
            _parameter(
                "models",
                Annotated[
                    str,
                    typer.Option(
                        help=f"Comma-separated model names, from: {', '.join(CLASSIFIER_MODELS)}.",
                        callback=_check_models,
                    ),
                ],
            ),
        ],
        skip=frozenset({"model", "resume"}),
        helps={"out": "Study directory: one sub-directory per model, comparison.md beside them."},
    )
)


@command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt written by `fervid train`.")],
    data: Annotated[Path, typer.Option(help="FER-2013 CSV or an ImageFolder root (train/, test/).")],
    split: Annotated[Split, typer.Option(help="The split to evaluate on.")] = "test",
    tta: Annotated[TTA, typer.Option(help="Test-time augmentation.")] = "none",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", callback=_check("device"))] = "auto",
) -> None:
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix of a checkpoint (JSON)."""
    from classifier.evaluate import evaluate_checkpoint

    if not checkpoint.is_file():
        raise NotFound(f"checkpoint {checkpoint} does not exist")
    with _training_errors():
        result = evaluate_checkpoint(checkpoint, data, split=split, tta=tta, device=device)
    print(json.dumps(result.to_dict(), indent=2))


@command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt written by `fervid train`.")],
    onnx_path: Annotated[
        Path | None, typer.Option("--out", help="Where to write the .onnx (default: beside the checkpoint).")
    ] = None,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch), checked against the PyTorch outputs when onnxruntime is there."""
    from classifier.export import export_onnx

    if not checkpoint.is_file():
        raise NotFound(f"checkpoint {checkpoint} does not exist")
    with _training_errors():
        result = export_onnx(checkpoint, onnx_path or checkpoint.with_suffix(".onnx"))
    check = f"max |onnx - torch| = {result.max_abs_diff:.2e}" if result.max_abs_diff is not None else result.note
    out.print(f"wrote {result.path} ({check})", highlight=False, soft_wrap=True)
