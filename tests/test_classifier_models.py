"""Every registered model builds, runs forward and takes a finite training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from classifier.models import (
    MODELS,
    ModelSpec,
    WeightsUnavailableError,
    create_model,
    get_spec,
    head_parameter_names,
    offline_mobilenet_v2_file,
    servable_by_name,
)
from fervid.choices import CLASSIFIER_MODELS
from fervid.errors import ConfigError
from fervid.settings import load_settings

BIG = {"densenet161", "resnet152", "vgg16"}


def _param(name: str):
    marks = [pytest.mark.slow] if name in BIG else []  # ~3-8 s each on 2 CPU cores; still runs by default
    return pytest.param(name, marks=marks, id=name)


def test_registry_lists_expected_models() -> None:
    assert set(MODELS) == {"densenet161", "resnet152", "vgg16", "mobilenet_v2", "vgg1", "vgg2", "vgg3", "mini_xception"}
    for name in MODELS:
        spec = get_spec(name)
        assert isinstance(spec, ModelSpec) and spec.channels in (1, 3)
        assert len(spec.mean) == len(spec.std) == spec.channels
    assert get_spec("mini_xception").input_size == 64 and get_spec("vgg1").input_size == 48


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9000'.*densenet161.*vgg3"):
        create_model("resnet9000")


def test_settings_know_exactly_the_registrys_names(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """fervid spells the names (so settings and --help check them without torch); they must be the registry's."""
    assert CLASSIFIER_MODELS == MODELS
    assert load_settings(data_dir=tmp_path, classifier__model="vgg16").classifier.model == "vgg16"
    with pytest.raises(ConfigError, match=r"classifier.model.*'densenet161'.*'mini_xception'"):
        load_settings(data_dir=tmp_path, classifier__model="resnet9000")
    monkeypatch.setenv("FERVID_CLASSIFIER__MODEL", "vgg4")
    with pytest.raises(ConfigError, match=r"classifier.model.*'vgg3'"):
        load_settings(data_dir=tmp_path)


def test_fer_weights_come_from_the_registry_entry() -> None:
    assert servable_by_name() == ("mini_xception",)
    assert get_spec("mini_xception").fer_weights is not None
    with pytest.raises(ValueError, match="'vgg2' has no FER-2013 weights; models with them: mini_xception"):
        create_model("vgg2", weights="fer")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [_param(n) for n in MODELS])
def test_forward_and_training_step(name: str) -> None:
    torch.manual_seed(0)
    spec = get_spec(name)
    model = create_model(name, num_classes=7)
    x = torch.randn(2, spec.channels, spec.input_size, spec.input_size)
    y = torch.tensor([0, 3])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if name not in BIG:  # eval-mode forward too (cheap models only: it doubles the cost)
        model.eval()
        with torch.inference_mode():
            assert torch.isfinite(model(x)).all()
    assert head_parameter_names(name, model), "freeze-then-unfreeze needs a head"


def test_mobilenet_v2_loads_real_offline_imagenet_weights() -> None:
    path = offline_mobilenet_v2_file()
    assert path is not None and path.name == "mobilenet_v2-b0353104.pth"
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model("mobilenet_v2", num_classes=7, weights="imagenet")
    # Backbone identical to the file (the strict=True load happened on the 1000-class model)...
    for key in ("features.0.0.weight", "features.18.1.running_var"):
        assert torch.equal(model.state_dict()[key], sd[key])
    assert model.state_dict()["features.0.0.weight"].sum().item() == pytest.approx(
        sd["features.0.0.weight"].sum().item()
    )
    # ...and the head replaced with a 7-class one.
    assert model.classifier[1].out_features == 7
    # 1000-class: the full file, including its real head.
    full = create_model("mobilenet_v2", num_classes=1000, weights="imagenet")
    assert torch.equal(full.classifier[1].weight, sd["classifier.1.weight"])


def test_imagenet_offline_error_names_file_and_directory(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from urllib.error import URLError

    import torchvision.models._api as api

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*_a, **_k):
        raise URLError("network is unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("resnet152", weights="imagenet")
    msg = str(info.value)
    assert "resnet152-394f9c45.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg


def test_no_imagenet_weights_for_small_nets() -> None:
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_model("vgg1", weights="imagenet")


def test_weights_path_state_dict_and_wrong_model(tmp_path) -> None:
    src = create_model("vgg2")
    torch.save(src.state_dict(), tmp_path / "vgg2.pt")
    dst = create_model("vgg2", weights=tmp_path / "vgg2.pt")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="do not fit model 'vgg3'"):
        create_model("vgg3", weights=tmp_path / "vgg2.pt")


def test_mini_xception_spec_matches_module() -> None:
    model = create_model("mini_xception")
    out = model(torch.rand(2, 1, 64, 64) * 2 - 1)
    assert out.shape == (2, 7)


def test_mini_xception_registered_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry imports classifier.mini_xception only when the model is built (the registry loads without
    h5py); a stand-in module with the same interface proves the wiring and the head detection."""
    import sys
    import types
    from importlib.machinery import ModuleSpec

    class FakeMiniXception(nn.Module):
        def __init__(self, num_classes: int = 7, in_channels: int = 1) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 8, 3)
            self.bn1 = nn.BatchNorm2d(8)
            self.classifier = nn.Conv2d(8, num_classes, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.relu(self.bn1(self.conv1(x)))).mean(dim=(2, 3))

    fake = types.ModuleType("classifier.mini_xception")
    fake.__spec__ = ModuleSpec("classifier.mini_xception", None)
    fake.MiniXception = FakeMiniXception
    monkeypatch.setitem(sys.modules, "classifier.mini_xception", fake)
    model = create_model("mini_xception", num_classes=7)
    assert isinstance(model, FakeMiniXception)
    assert head_parameter_names("mini_xception", model) == ["classifier.weight", "classifier.bias"]
    out = model(torch.rand(2, 1, 64, 64) * 2 - 1)
    assert out.shape == (2, 7)
