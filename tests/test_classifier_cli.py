"""`fervid train | compare | evaluate | export`: options built from TrainConfig, checked at parse, progress lines."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer.core
import typer.main
from synthetic_faces import write_image_folder
from typer.testing import CliRunner

import classifier.train as train_mod
from classifier.config import OPTIONS, TrainConfig
from fervid.cli import app
from fervid.cli import classifier as cli
from fervid.errors import ConfigError

WIDE = {"COLUMNS": "400"}  # help on one line per option, whatever the terminal


def invoke(*args: str) -> typer.testing.Result:
    return CliRunner(env=WIDE).invoke(app, list(args))


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data") / "faces", n_train=8, n_test=2)


def test_train_options_are_train_config_fields() -> None:
    """One definition: every TrainConfig field is an option of `fervid train` with its default, help and bounds;
    `compare` takes the same but the model (it has --models) and --resume."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    commands = group.commands
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    train = {p.name: p for p in commands["train"].params}
    assert set(train) == {*fields, "log_level", "verbose"}
    for name, default in fields.items():
        opt = OPTIONS[name][1]
        assert train[name].default == default and train[name].help == opt.help, name
        assert (train[name].min, train[name].max) == (opt.min, opt.max), name
    compare = {p.name for p in commands["compare"].params}
    assert compare == {*fields, "log_level", "verbose", "models"} - {"model", "resume"}
    help_text = invoke("train", "--help").output
    choices = "|".join(typing.get_args(OPTIONS["model"][0]))
    assert f"<{choices}>" in help_text and "<none|flip|tencrop>" in help_text and "--no-amp" in help_text


def test_evaluate_names_the_same_tta_choices_as_the_classifier() -> None:
    from classifier.config import TTA

    assert typing.get_args(cli.TTA) == typing.get_args(TTA)
    assert "<none|flip|tencrop>" in invoke("evaluate", "--help").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "resnet9000"], "'resnet9000' is not one of 'densenet161'"),
        (["train", "--device", "gpu"], "device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
        (["train", "--weights", "no-such.pt"], "weights must be none, imagenet, fer or an existing file"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--optimizer", "adam"], "'adam' is not one of 'adamw', 'sgd'"),
        (["train", "--no-such-flag"], "No such option"),
        (["compare", "--models", "vgg1,vgg9"], "vgg9: choose from densenet161"),
        (["compare", "--models", ","], "none given: choose from densenet161"),
        (["compare"], "Missing option '--models'"),
        (["evaluate", "x.pt", "--data", "d", "--tta", "fivecrop"], "'fivecrop' is not one of 'none', 'flip'"),
        (["evaluate", "x.pt", "--data", "d", "--split", "dev"], "'dev' is not one of 'train', 'val', 'test'"),
        (["evaluate", "x.pt", "--data", "d", "--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_options_are_usage_errors_before_any_work(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "--out", str(tmp_path / "run")) if args[0] == "train" else invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing created, nothing loaded


def test_building_the_cli_imports_no_torch() -> None:
    """`import fervid.cli` imports no stage; building its commands reads only classifier/config.py (torch-free)."""
    code = (
        "import sys, typer.main, fervid.cli\n"
        "mods = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'classifier', 'detector'))\n"
        "print(mods()); typer.main.get_command(fervid.cli.app); print(mods())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "['classifier', 'classifier.config']"]


def test_fervid_train_prints_a_line_per_epoch_then_a_summary(faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--data", str(faces), "--num-workers", "0", "--no-progress"]
    result = invoke("train", "--model", "vgg1", "--epochs", "2", "--out", str(run), *common)
    assert result.exit_code == 0, result.output
    epochs = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all(" | val loss " in line and ", ETA " in line for line in epochs)
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("vgg1: best val accuracy ") and str(run) in summary[0]
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    # A second run into the same directory is refused with a project error (one line under `fervid`) saying what
    # to do instead.
    again = invoke("train", "--model", "vgg1", "--epochs", "2", "--out", str(run), *common)
    assert isinstance(again.exception, ConfigError) and "or --resume DIR/last.pt" in str(again.exception)


def test_an_interrupted_run_says_how_to_resume(faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = train_mod.evaluate, []

    def interrupt_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "evaluate", interrupt_in_epoch_2)
    run = tmp_path / "run"
    options = ["--epochs", "2", "--out", str(run), "--data", str(faces), "--num-workers", "0", "--no-progress"]
    result = invoke("train", "--model", "vgg1", *options)
    assert result.exit_code != 0
    assert f"fervid train --resume {run / 'last.pt'}" in " ".join(result.stderr.split())
