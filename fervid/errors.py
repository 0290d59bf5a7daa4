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


def cut(text: str, limit: int = 100) -> str:
    """`text` cut to about `limit` characters, saying how long it was: an error echoes what it rejected, but never
    a 5,000-character camera name whole."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"
