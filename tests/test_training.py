"""End-to-end training on generated faces: learning, artefacts, resume, freezing, transfer, export."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_faces import write_fer_csv, write_image_folder

from classifier.checkpoint import load_checkpoint, read_checkpoint
from classifier.data import CLASSES, FaceDataset, eval_transform, load_splits
from classifier.evaluate import evaluate_checkpoint
from classifier.models import head_parameter_names
from classifier.train import TrainConfig, train
from fervid.errors import ConfigError

CHANCE = 1 / len(CLASSES)


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 40/class train (4 of them carved off as val), 12/class test: 364 images.
    return write_image_folder(tmp_path_factory.mktemp("data") / "faces", n_train=40, n_test=12)


def _config(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(
        model="vgg1",
        data=str(data),
        out=str(out),
        epochs=5,
        batch_size=32,
        lr=3e-3,
        num_workers=0,
        progress=False,
        patience=0,
    )
    return dataclasses.replace(base, **kw)


@pytest.fixture(scope="module")
def trained(faces: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "vgg1"
    return train(_config(faces, out))


def test_short_run_learns_well_above_chance(trained) -> None:
    assert trained.best_val_accuracy >= 0.6, trained.history
    assert trained.test_accuracy is not None and trained.test_accuracy >= 0.6
    assert trained.epochs_run == 5


def test_artefacts_are_complete_and_real(trained) -> None:
    out = trained.out_dir
    for name in (
        "best.pt",
        "last.pt",
        "metrics.csv",
        "metrics.json",
        "curves.png",
        "confusion_matrix.png",
        "report.md",
        "report.json",
        "config.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / ".inprogress").exists()
    assert not list(out.glob(".*.tmp"))
    for png, min_w in (("curves.png", 800), ("confusion_matrix.png", 500)):
        with Image.open(out / png) as im:
            im.verify()
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width >= min_w and im.height >= 400
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert len(metrics[key]) == 5 and all(np.isfinite(metrics[key]))
    assert metrics["epoch"] == [1, 2, 3, 4, 5]
    assert metrics["best_val_accuracy"] == max(metrics["val_accuracy"])
    assert metrics["val_accuracy"][metrics["best_epoch"] - 1] == metrics["best_val_accuracy"]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == metrics["epoch"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
        assert [float(r[key]) for r in rows] == pytest.approx(metrics[key], rel=1e-12), key
    report = json.loads((out / "report.json").read_text())
    assert set(report["test"]["recall"]) == set(CLASSES)
    assert "| happy |" in (out / "report.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "vgg1" and config["epochs"] == 5
    best = read_checkpoint(out / "best.pt")
    assert best["kind"] == "best" and best["classes"] == list(CLASSES) and best["input_size"] == 48
    assert best["metrics"]["best_val_accuracy"] == metrics["best_val_accuracy"]


def test_checkpoint_round_trip_identical_outputs(trained, faces: Path) -> None:
    model, meta = load_checkpoint(trained.best_checkpoint)
    assert meta.model_name == "vgg1" and meta.classes == CLASSES and meta.channels == 1
    splits = load_splits(faces)
    tf = eval_transform(meta.input_size, meta.channels, meta.mean, meta.std)
    x = torch.stack([FaceDataset(splits.test, tf)[i][0] for i in range(8)])
    model2, _ = load_checkpoint(trained.best_checkpoint)
    with torch.inference_mode():
        assert torch.equal(model(x), model2(x))
    sd = read_checkpoint(trained.best_checkpoint)["state_dict"]
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    ev = evaluate_checkpoint(trained.best_checkpoint, faces, split="test")
    assert ev.accuracy == pytest.approx(trained.test_accuracy)
    assert np.asarray(ev.confusion).sum() == ev.num_samples == 84
    # The serving preprocess sees the same pixels as evaluation (BGR crops replicated from gray).
    from classifier.checkpoint import make_preprocess

    crops = [np.asarray(FaceDataset(splits.test, None).load_image(i)) for i in range(8)]
    bgr = [np.repeat(c[:, :, None], 3, axis=2) for c in crops]
    assert torch.allclose(make_preprocess(meta)(bgr), x, atol=1e-6)
    flip = evaluate_checkpoint(trained.best_checkpoint, faces, split="test", tta="flip")
    ten = evaluate_checkpoint(trained.best_checkpoint, faces, split="test", tta="tencrop")
    assert flip.accuracy > 0.5 and ten.accuracy > 0.5


def test_resume_continues_from_saved_epoch(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    first = train(_config(faces, out, epochs=2), echo=lines.append)
    assert first.epochs_run == 2
    # One line per epoch: losses, accuracies, the epoch's time and what is left.
    number = r"\d+\.\d{4}"
    epoch_line = rf"epoch (\d)/2: train loss {number} acc {number} \| val loss {number} acc {number}( \(best\))? \| "
    assert len(lines) == 2 and all(re.fullmatch(epoch_line + r"\d+\.\d s, ETA [\dhms ]+", line) for line in lines), (
        lines
    )
    assert "(best)" in lines[0] and lines[1].endswith("ETA 0 s")
    assert first.summary().startswith(f"vgg1: best val accuracy {first.best_val_accuracy:.4f} at epoch ")
    assert f"artefacts in {out}" in first.summary()
    last = read_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and {"optimizer", "scheduler", "rng", "history"} <= set(last)
    # A fresh run into the same directory is refused...
    with pytest.raises(FileExistsError):
        train(_config(faces, out, epochs=3))
    # ...resuming it continues at epoch 3 with the saved history and settings.
    resumed = train(_config(faces, Path("ignored"), epochs=3, resume=str(out / "last.pt"), lr=99.0))
    assert resumed.out_dir == out and resumed.epochs_run == 3
    assert resumed.history["epoch"] == [1, 2, 3]
    assert resumed.history["train_loss"][:2] == first.history["train_loss"]
    assert json.loads((out / "config.json").read_text())["lr"] == 3e-3  # saved config wins
    assert read_checkpoint(out / "last.pt")["epoch"] == 3


def test_failed_run_leaves_no_best_pt(faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import classifier.train as train_mod

    def boom(*_a, **_k):
        raise RuntimeError("disk full while plotting")

    monkeypatch.setattr(train_mod, "plot_confusion", boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="disk full"):
        train(_config(faces, out, epochs=1))
    assert not (out / "best.pt").exists()  # nothing claims the run finished
    assert (out / "last.pt").exists()  # but it can be resumed


def test_freeze_then_unfreeze(faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import classifier.train as train_mod

    snapshots: list[dict[str, torch.Tensor]] = []
    real = train_mod.evaluate

    def spy(model, *a, **k):
        snapshots.append({k2: v.detach().clone() for k2, v in model.state_dict().items()})
        return real(model, *a, **k)

    monkeypatch.setattr(train_mod, "evaluate", spy)
    # Initial weights: what create_model produces after seeding like train() does.
    torch.manual_seed(0)
    from classifier.models import create_model

    init = create_model("vgg1").state_dict()
    train(_config(faces, tmp_path / "run", model="vgg1", epochs=3, freeze_epochs=2, seed=0))
    head = set(head_parameter_names("vgg1", create_model("vgg1")))
    assert head and len(snapshots) == 3
    assert all(h.startswith("classifier.") for h in head)
    backbone = [k for k in init if k.startswith("features.")]  # params and BN buffers
    assert backbone
    for epoch in (0, 1):  # head-only epochs: backbone params and BN statistics untouched
        for k in backbone:
            assert torch.equal(snapshots[epoch][k], init[k]), (epoch, k)
        assert not torch.equal(snapshots[epoch]["classifier.5.weight"], init["classifier.5.weight"])
    changed = [k for k in backbone if not torch.equal(snapshots[2][k], init[k])]
    assert "features.0.0.weight" in changed  # unfrozen in epoch 3


def test_transfer_learning_mobilenet_v2_imagenet(faces: Path, tmp_path: Path) -> None:
    result = train(
        _config(
            faces,
            tmp_path / "mnv2",
            model="mobilenet_v2",
            weights="imagenet",
            input_size=96,
            epochs=2,
            freeze_epochs=1,
            lr=2e-3,
            batch_size=32,
        )
    )
    assert result.best_val_accuracy > 2 * CHANCE, result.history
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta.input_size == 96 and meta.channels == 3 and meta.mean == pytest.approx((0.485, 0.456, 0.406))


def test_fer_csv_training_smoke(tmp_path: Path) -> None:
    csv = write_fer_csv(tmp_path / "fer2013.csv", n_train=10, n_val=3, n_test=3)
    result = train(
        _config(
            csv,
            tmp_path / "run",
            epochs=1,
            sampler="weighted",
            optimizer="sgd",
            scheduler="onecycle",
            precise_bn_batches=2,
        )
    )
    assert result.best_checkpoint.is_file() and len(result.history["epoch"]) == 1


def test_export_onnx_round_trip(trained, tmp_path: Path) -> None:
    import onnx

    from classifier.export import export_onnx

    result = export_onnx(trained.best_checkpoint, tmp_path / "vgg1.onnx")
    assert Path(result).is_file()
    onnx.checker.check_model(onnx.load(str(result.path)))
    assert result.structural_check
    assert result.numeric_check, result.note  # onnxruntime is in the dev group
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert props["classes"].split(",") == list(CLASSES) and props["input_size"] == "48"


def test_compare_two_models(faces: Path, tmp_path: Path) -> None:
    from classifier.compare import compare

    base = _config(faces, tmp_path, epochs=1)
    lines: list[str] = []
    result = compare(
        ["vgg1", "vgg2"], faces, epochs=1, out=tmp_path / "cmp", base=base, throughput_seconds=0.2, echo=lines.append
    )
    text = result.report.read_text()
    assert "| vgg1 |" in text and "| vgg2 |" in text and "img/s CPU" in text
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [m["model"] for m in data["models"]] == ["vgg1", "vgg2"]
    assert lines[0] == "model 1 of 2: vgg1" and "model 2 of 2: vgg2" in lines
    assert any(line.startswith("[2/2 vgg2] epoch 1/1: train loss") for line in lines)
    best = max(data["models"], key=lambda m: m["accuracy"])
    assert result.best_model == best["model"] and result.best_accuracy == best["accuracy"]
    assert result.summary().startswith("2 model(s) compared in ") and f"best {best['model']}" in result.summary()
    assert all(m["images_per_second"]["cpu"] > 0 and m["parameters"] > 0 for m in data["models"])
    with Image.open(tmp_path / "cmp" / "curves_overlay.png") as im:
        assert im.format == "PNG" and im.width > 600


def test_bad_data_does_not_clobber_existing_run(trained, tmp_path: Path) -> None:
    from classifier.data import DataError

    before = (trained.out_dir / "best.pt").read_bytes()
    with pytest.raises(DataError, match="does not exist"):
        train(_config(tmp_path / "no-such-data", trained.out_dir, overwrite=True))
    assert (trained.out_dir / "best.pt").read_bytes() == before


def test_resume_after_crash_matches_uninterrupted_run(
    faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """last.pt restores model, optimizer, scheduler and RNG: a run killed in epoch 2 and resumed
    ends exactly where an uninterrupted run does."""
    import classifier.train as train_mod

    straight = train(_config(faces, tmp_path / "straight", epochs=2))

    real = train_mod.evaluate
    calls = {"n": 0}

    def crash_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "evaluate", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_config(faces, tmp_path / "crashed", epochs=2))
    monkeypatch.setattr(train_mod, "evaluate", real)
    crashed = tmp_path / "crashed"
    assert not (crashed / "best.pt").exists()
    # What the crash could not take: epoch 1's row, and the options the run was started with.
    assert (crashed / "metrics.csv").read_text().splitlines()[1].startswith("1,")
    assert len((crashed / "metrics.csv").read_text().splitlines()) == 2
    assert json.loads((crashed / "config.json").read_text())["epochs"] == 2
    resumed = train(_config(faces, tmp_path / "x", epochs=2, resume=str(tmp_path / "crashed" / "last.pt")))
    for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
        assert resumed.history[key] == pytest.approx(straight.history[key], rel=1e-5), key
    a = read_checkpoint(straight.best_checkpoint)["state_dict"]
    b = read_checkpoint(resumed.best_checkpoint)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_compare_checks_every_name_before_training(faces: Path, tmp_path: Path) -> None:
    from classifier.compare import compare

    with pytest.raises(ConfigError, match="unknown model 'vgg9'; known models"):
        compare(["vgg1", "vgg9"], faces, epochs=1, out=tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "vgg1").exists()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({}, None),
        ({"model": "mini_xception", "device": "cuda:1", "weights": "imagenet", "input_size": None}, None),
        ({"model": "resnet9000"}, r"model must be one of densenet161, .*mini_xception; got 'resnet9000'"),
        ({"optimizer": "adam"}, "optimizer must be one of adamw, sgd; got 'adam'"),
        ({"eval_tta": "fivecrop"}, "eval_tta must be one of none, flip, tencrop"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
        ({"epochs": 0}, "epochs must be >= 1; got 0"),
        ({"val_fraction": 1.0}, "val_fraction must be >= 0.0 and <= 0.9; got 1.0"),
        ({"input_size": 8}, "input_size must be >= 16; got 8"),
    ],
)
def test_train_config_rejects_what_train_cannot_use(options: dict[str, object], error: str | None) -> None:
    if error is None:
        assert TrainConfig(**options).to_dict().items() >= options.items()
        return
    with pytest.raises(ConfigError, match=error):
        TrainConfig(**options)


def test_export_in_the_runtime_install(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fervid export` needs only runtime dependencies: onnx is one; without onnxruntime (dev only) the graph is
    still written and structurally checked, and the result says the numeric check was skipped."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=\[ ;]", d)[0] for d in project["dependencies"]}
    assert "onnx" in runtime and "onnxruntime" not in runtime
    import onnx

    from classifier.export import export_onnx

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    result = export_onnx(trained.best_checkpoint, tmp_path / "vgg1.onnx")
    assert result.structural_check and not result.numeric_check and result.max_abs_diff is None
    assert "skipped" in result.note and "onnxruntime" in result.note
    onnx.checker.check_model(onnx.load(str(result.path)))
