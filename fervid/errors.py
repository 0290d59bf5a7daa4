"""Project exceptions. The CLI turns any :class:`FervidError` into one line on stderr and a non-zero exit."""

from __future__ import annotations


class FervidError(Exception):
    """An error a user can fix: bad input, bad configuration, an unreachable service. The message says how."""

    exit_code: int = 2


class ConfigError(FervidError):
    """Settings or a config file are invalid."""


class SourceError(FervidError):
    """A video source cannot be opened or read."""


class ServiceUnavailable(FervidError):
    """Redis or the database cannot be reached."""


class NotFound(FervidError):
    """A named thing (camera, checkpoint, file) does not exist."""

    exit_code = 1
