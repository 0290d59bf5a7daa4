"""Logging for every command: one level (``--log-level`` or ``FERVID_LOG_LEVEL``), text for people or one JSON
object per line for containers (``FERVID_LOG_FORMAT=json``), always on stderr so stdout stays the command's output.

Both variables are read here, not by :class:`fervid.settings.Settings`: logging starts before settings load, so
that a settings error is itself logged in the chosen format.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from fervid.errors import ConfigError

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
LEVEL_ENV = "FERVID_LOG_LEVEL"
FORMAT_ENV = "FERVID_LOG_FORMAT"

# LogRecord's own attributes; anything else on a record came from `extra=` and goes into the JSON object
# (except uvicorn's ANSI-coloured copy of its message).
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO-8601), level, logger, message, the `extra=` fields, and the
    exception text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_format() -> LogFormat:
    """``FERVID_LOG_FORMAT``: text (default) or json. Raises ConfigError for anything else."""
    value = os.environ.get(FORMAT_ENV, "text").strip().lower() or "text"
    if value not in get_args(LogFormat):
        raise ConfigError(f"{FORMAT_ENV}={value!r} is not a log format: use {' or '.join(get_args(LogFormat))}")
    return cast(LogFormat, value)


def configure(level: LogLevel, fmt: LogFormat | None = None) -> None:
    """(Re)configure the root logger: `level`, on stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if (fmt or log_format()) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def format_config(config: dict[str, Any], prefix: str = "") -> str:
    """``{"detector": {"device": "cpu"}}`` → ``detector.device=cpu``: a configuration on one log line."""
    parts = []
    for key, value in config.items():
        if isinstance(value, dict):
            parts.append(format_config(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}={value}")
    return " ".join(parts)
