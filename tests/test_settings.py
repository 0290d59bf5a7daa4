"""Settings: a FERVID_* variable that is no setting fails naming the closest one; names are validated when
settings load; the start-up description redacts credentials; the spine's name lists match the registries."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import get_args

import pytest

from fervid.choices import DetectorBackend, Device, TimelineLabels
from fervid.errors import ConfigError
from fervid.settings import NOT_SETTINGS, check_environment, load_settings, setting_variables

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("FERVID_REDIS", "did you mean FERVID_REDIS_URL?"),
        ("FERVID_DB", "did you mean FERVID_DB_URL?"),
        ("FERVID_DETECTR__BACKEND", "did you mean FERVID_DETECTOR__BACKEND?"),
        ("fervid_namespac", "did you mean FERVID_NAMESPACE?"),
        ("FERVID_CLASSIFIER__SMOOTHING__ALPA", "did you mean FERVID_CLASSIFIER__SMOOTHING__ALPHA?"),
        ("FERVID_LOG_LEVLE", "did you mean FERVID_LOG_LEVEL?"),
        ("FERVID_ZZZZZZZZZZZZZZZZ", "settings are listed in fervid/settings.py"),
    ],
)
def test_an_unknown_variable_names_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, hint: str
) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ConfigError, match=re.escape(f"{variable} is not a setting: {hint}")):
        load_settings()


def test_known_variables_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "FERVID_NAMESPACE": "n1",
        "FERVID_DETECTOR__BACKEND": "haar",
        "FERVID_CLASSIFIER__SMOOTHING__ALPHA": "0.5",
        "FERVID_API_TOKEN": "s3cret",
        "FERVID_LOG_LEVEL": "debug",
        "FERVID_OFFLINE": "1",
        "OTHER_THING": "x",
    }
    check_environment(env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    assert (settings.namespace, settings.detector.backend, settings.classifier.smoothing.alpha) == ("n1", "haar", 0.5)
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_every_fervid_variable_in_the_tree_is_a_setting_or_listed() -> None:
    """Code, compose, Dockerfile, docs: each FERVID_X they name is a setting or one of NOT_SETTINGS, so a user
    who copies one never meets 'is not a setting'."""
    valid = set(setting_variables()) | set(NOT_SETTINGS)
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    named: dict[str, str] = {}
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.name in {"test_settings.py", "test_cli_usage.py"}:  # their typos are on purpose
            continue
        # (a documented typo is followed by the error it gets)
        for variable in re.findall(
            r"\bFERVID_[A-Z0-9_]*[A-Z0-9]\b(?! is not a setting)", path.read_text(errors="ignore")
        ):
            named.setdefault(variable, name)
    unknown = {n: where for n, where in named.items() if n not in valid and n != "FERVID_PG"}
    assert unknown == {}
    assert {"FERVID_API_TOKEN", "FERVID_WEIGHTS_DIR", "FERVID_OFFLINE", "FERVID_LOG_LEVEL"} <= set(named)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"detector__backend": "yolo"}, "detector.backend (FERVID_DETECTOR__BACKEND): Input should be 'retinaface'"),
        ({"detector__device": "tpu"}, "detector.device (FERVID_DETECTOR__DEVICE): Input should be 'auto', 'cpu'"),
        ({"classifier__device": "gpu"}, "classifier.device"),
        ({"db_url": "mysql://u:pw@h/db"}, "unsupported database URL mysql://***@h/db"),
    ],
)
def test_bad_names_fail_when_settings_load(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(**overrides)


def test_describe_redacts_credentials() -> None:
    settings = load_settings(
        redis_url="redis://:hunter2@cache:6379/0", db_url="postgresql+psycopg://fervid:hunter2@db/fervid"
    )
    config = settings.describe("storage", db=True)
    assert config["redis"] == "redis://***@cache:6379/0" and config["db"] == "postgresql+psycopg://***@db/fervid"
    assert config["storage"] == {"batch_size": 256, "max_wait_ms": 200}
    assert "hunter2" not in repr(config) and "db" not in settings.describe("detector")


def test_the_spine_names_match_the_registries() -> None:
    from detector.registry import DETECTORS
    from fervid.device import resolve_device

    assert set(get_args(DetectorBackend)) == set(DETECTORS)
    assert str(resolve_device("cpu")) == "cpu" and "auto" in get_args(Device)
    assert set(get_args(Device)) - {"auto"} <= {"cpu", "cuda"}
    from storage.timeline import Labels

    assert get_args(Labels) == get_args(TimelineLabels)
