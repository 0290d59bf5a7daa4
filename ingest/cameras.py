"""`cameras.yaml`: the cameras one ingest process runs, validated with pydantic.

    cameras:
      - name: door
        url: rtsp://${DOOR_USER}:${DOOR_PASSWORD}@10.0.0.12:554/stream1
        fps: 5              # analysis rate (frames/s kept), by timestamp
        transport: tcp      # or udp (RTSP only)
      - name: yard
        url: rtsps://${YARD_USER}:${YARD_PASSWORD}@10.0.0.13:322/live
        tls_verify: false   # its certificate is self-signed (or: tls_ca_file: /etc/fervid/yard.pem)
        hwaccel: cuda       # decode on the GPU when there is one; software (with a warning) otherwise
      - name: desk
        url: /dev/video0    # or 0
      - name: replay
        url: /data/lobby.mp4
        loop: true

``${VAR}`` is replaced by the environment variable VAR anywhere in a string value (credentials stay out of the
file); a missing variable is an error that names it and the field. Unknown keys are errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fervid.bus import redact_url
from fervid.contracts import validate_camera_name
from fervid.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str = Field(min_length=1)
    fps: float | None = Field(5.0, gt=0, le=240)  # analysis rate; null = every frame
    max_size: int | None = Field(None, ge=64, le=16384)  # longest side before JPEG; null = settings.ingest.max_size
    enabled: bool = True
    transport: Literal["tcp", "udp"] = "tcp"
    loop: bool = False  # files only: start over at the end
    open_timeout: float = Field(10.0, gt=0, le=300)  # seconds to connect and read the stream header
    read_timeout: float = Field(5.0, gt=0, le=300)  # no packet for this long: the connection is dead
    stall_timeout: float = Field(10.0, gt=0, le=600)  # packets but no decoded frame for this long: reconnect
    decoder_threads: int = Field(0, ge=0, le=64)  # 0: FFmpeg picks
    hwaccel: str | None = None  # hardware decoding: cuda, vaapi, qsv, videotoolbox, ... (software when unavailable)
    tls_verify: bool = True  # rtsps: verify the camera's certificate; false for self-signed ones
    tls_ca_file: str | None = None  # rtsps: PEM of the CA (or the camera's own certificate) to trust

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_camera_name(v)

    @field_validator("hwaccel")
    @classmethod
    def _hwaccel(cls, v: str | None) -> str | None:
        from av.codec.hwaccel import HWDeviceType

        known = [t.name for t in HWDeviceType if t.name != "none"]
        if v is not None and v not in known:
            raise ValueError(f"unknown hardware decoder {v!r}; FFmpeg knows: {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _loop_only_for_files(self) -> CameraConfig:
        from ingest.source import source_kind

        if self.loop and source_kind(self.url) != "file":
            raise ValueError("loop applies to video files only")
        if (not self.tls_verify or self.tls_ca_file) and not self.url.startswith("rtsps://"):
            raise ValueError("tls_verify and tls_ca_file apply to rtsps:// cameras only")
        if self.transport == "udp" and source_kind(self.url) != "rtsp":
            raise ValueError("transport applies to RTSP cameras only")
        return self

    def __repr__(self) -> str:  # never print credentials, even in a debugger or a traceback
        return f"CameraConfig(name={self.name!r}, url={redact_url(self.url)!r})"

    __str__ = __repr__


class CamerasFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cameras: list[CameraConfig] = Field(min_length=1)

    @field_validator("cameras")
    @classmethod
    def _unique(cls, cams: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for c in cams:
            if c.name in seen:
                raise ValueError(f"camera name {c.name!r} is used twice")
            seen.add(c.name)
        return cams


def substitute_env(value: Any, env: dict[str, str] | None = None, path: str = "") -> Any:
    """Replace ``${VAR}`` in every string of `value`; a missing variable raises ConfigError naming it and the field."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    if isinstance(value, dict):
        return {k: substitute_env(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:  # type: ignore[operator]
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return env[name]  # type: ignore[index]

        return _VAR.sub(repl, value)
    return value


def parse_cameras(text: str, source: str = "cameras.yaml", env: dict[str, str] | None = None) -> list[CameraConfig]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'cameras' list at the top")
    raw = substitute_env(raw, env)
    try:
        return CamerasFile.model_validate(raw).cameras
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            where = ".".join(map(str, e["loc"]))
            # Name the camera, not only its index, when we can.
            loc = e["loc"]
            if len(loc) >= 2 and loc[0] == "cameras" and isinstance(loc[1], int):
                try:
                    where += f" ({raw['cameras'][loc[1]]['name']})"
                except (KeyError, TypeError, IndexError):
                    pass
            problems.append(f"{where}: {e['msg']}")
        # pydantic's messages include input values: the only value that may hold a secret is a URL; redact.
        raise ConfigError(f"{source}: " + "; ".join(redact_url(p) for p in problems)) from None


def load_cameras(path: Path, env: dict[str, str] | None = None) -> list[CameraConfig]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read camera config {path}: {exc.strerror}") from None
    return parse_cameras(text, str(path), env)
