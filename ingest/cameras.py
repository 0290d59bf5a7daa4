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
        start_time: 2024-05-01T09:30:00Z  # files: when it was recorded (default: its creation_time tag)

``${VAR}`` is replaced by the environment variable VAR anywhere in a string value (credentials stay out of the
file); a missing variable is an error that names it and the field. Unknown keys are errors, and so is a URL
that can never work (``rtsp://`` without a host, a scheme no source type has). A file that is not UTF-8 or not
YAML is one error line with the file, line and column.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fervid.bus import redact_url
from fervid.contracts import parse_utc, validate_camera_name
from fervid.errors import ConfigError, cut

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
    # Files: when the recording started (capture time = this + PTS). Default: the file's creation_time tag when
    # it has one, else when ingest started reading it. Without a zone: UTC.
    start_time: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_camera_name(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from ingest.source import checked_source

        try:
            checked_source(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("start_time", mode="before")
    @classmethod
    def _start_time(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = parse_utc(v)
            except ValueError:
                raise ValueError(
                    f"start time {cut(repr(v))} is not ISO 8601: use e.g. 2024-05-01T09:30:00Z (no zone: UTC)"
                ) from None
        if isinstance(v, datetime) and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v

    @field_validator("hwaccel")
    @classmethod
    def _hwaccel(cls, v: str | None) -> str | None:
        from av.codec.hwaccel import HWDeviceType

        known = [t.name for t in HWDeviceType if t.name != "none"]
        if v is not None and v not in known:
            raise ValueError(f"unknown hardware decoder {cut(repr(v))}; FFmpeg knows: {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _options_apply_to_the_source(self) -> CameraConfig:
        from ingest.source import source_type

        source = source_type(self.url)  # a known kind: the url validator ran first
        for option in ("loop", "start_time"):
            if getattr(self, option) and source.live:
                raise ValueError(f"{option} applies to video files only")
        if (not self.tls_verify or self.tls_ca_file) and "tls" not in source.options:
            raise ValueError("tls_verify and tls_ca_file apply to rtsps:// cameras only")
        if self.transport == "udp" and "transport" not in source.options:
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
                raise ValueError(f"camera name {c.name!r} is used twice")  # a valid name: 64 characters at most
            seen.add(c.name)
        return cams


def substitute_env(value: Any, env: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Replace ``${VAR}`` in every string of `value`; a missing variable raises ConfigError naming it and the field."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: substitute_env(v, environ, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, environ, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in environ:
                raise ConfigError(f"{cut(path)}: environment variable {cut(name)} is not set")
            return environ[name]

        return _VAR.sub(repl, value)
    return value


def parse_cameras(text: str, source: str = "cameras.yaml", env: Mapping[str, str] | None = None) -> list[CameraConfig]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(source, text, exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'cameras' list at the top")
    raw = substitute_env(raw, env)
    try:
        return CamerasFile.model_validate(raw).cameras
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_problems(exc, raw))) from None


def camera_config(**fields: Any) -> CameraConfig:
    """A camera from the command line (`fervid demo`, `fervid ingest-files`); ConfigError naming what is wrong."""
    try:
        return CameraConfig(**fields)
    except ValidationError as exc:
        raise ConfigError("; ".join(_problems(exc))) from None


def load_cameras(path: Path, env: Mapping[str, str] | None = None) -> list[CameraConfig]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read camera config {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data[: exc.start].decode("utf-8", "replace"))
        raise ConfigError(
            f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None
    return parse_cameras(text, str(path), env)


def _problems(exc: ValidationError, raw: Any = None) -> list[str]:
    """One "where: what" per error, the camera named beside its index, echoed values cut short."""
    problems = []
    for e in exc.errors():
        loc = e["loc"]
        where = cut(".".join(map(str, loc)))
        if len(loc) >= 2 and loc[0] == "cameras" and isinstance(loc[1], int):
            with contextlib.suppress(KeyError, TypeError, IndexError):
                where += f" ({cut(str(raw['cameras'][loc[1]]['name']))})"
        problems.append(f"{where}: {cut(e['msg'], 300)}" if where else cut(e["msg"], 300))
    # pydantic's messages may include input values: the only value that may hold a secret is a URL; redact.
    return [redact_url(p) for p in problems]


def _yaml_error(source: str, text: str, exc: yaml.YAMLError) -> str:
    """`source:line:column: not valid YAML: problem`, one line (PyYAML's own message spans several)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        line, column = mark.line + 1, mark.column + 1
    else:  # a ReaderError (a character YAML does not allow) knows only its offset
        line, column = _line_column(text[: getattr(exc, "position", 0)])
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{source}:{line}:{column}: not valid YAML: {cut(str(problem))}" + (
        f" ({cut(str(context))})" if context else ""
    )


def _line_column(before: str) -> tuple[int, int]:
    """1-based line and column of the character that follows `before`."""
    return before.count("\n") + 1, len(before) - before.rfind("\n")
