#!/usr/bin/env python3
"""The fervid image's entrypoint: settle the environment, then exec the command (``fervid ...``), so the
command is PID 1's program and gets SIGTERM directly.

1. ``FERVID_<SETTING>_FILE=path`` sets ``FERVID_<SETTING>`` to the file's content (trailing newlines stripped):
   compose and Kubernetes put secrets in files (``/run/secrets/<name>``), out of the environment listing.
2. ``${VAR}`` inside a ``FERVID_*`` value is replaced by ``VAR``'s value, or the content of the file named by
   ``VAR_FILE``, percent-encoded when the value is a URL, so that
   ``FERVID_REDIS_URL=redis://:${REDIS_PASSWORD}@redis:6379/0`` with ``REDIS_PASSWORD_FILE`` works with any
   password. Other ``*_FILE`` variables (``SSL_CERT_FILE``, ...) are left alone.
3. An empty ``FERVID_*`` variable is removed: compose passes ``""`` for an optional value left blank in
   ``.env`` (``CLASSIFIER_CHECKPOINT``), which means "not set", not "the empty path".

Giving both ``X`` and ``X_FILE`` is an error. Errors are one line on stderr and exit status 2, naming the
variable or the file.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import quote

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


class EntrypointError(Exception):
    pass


def _read(path: str, variable: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise EntrypointError(f"{variable}: cannot read {path}: {exc.strerror}") from None


def resolve(env: dict[str, str]) -> dict[str, str]:
    """The environment the command gets (pure: tested without a container)."""
    env = dict(env)
    for key in [k for k in env if k.startswith("FERVID_") and k.endswith("_FILE")]:
        name = key.removesuffix("_FILE")
        if env.get(name):
            raise EntrypointError(f"both {name} and {key} are set: give one")
        env[name] = _read(env.pop(key), key)
    values: dict[str, str] = {}
    for name in sorted({m for k, v in env.items() if k.startswith("FERVID_") for m in _REF.findall(v)}):
        if f"{name}_FILE" in env:
            if env.get(name):
                raise EntrypointError(f"both {name} and {name}_FILE are set: give one")
            values[name] = _read(env[f"{name}_FILE"], f"{name}_FILE")
        elif name in env:
            values[name] = env[name]
        else:
            refs = [k for k, v in env.items() if k.startswith("FERVID_") and f"${{{name}}}" in v]
            raise EntrypointError(f"{refs[0]} refers to ${{{name}}}, but neither {name} nor {name}_FILE is set")
    for key in [k for k in env if k.startswith("FERVID_")]:
        value = env[key]
        if _URL.match(value):
            value = _REF.sub(lambda m: quote(values[m.group(1)], safe=""), value)
        else:
            value = _REF.sub(lambda m: values[m.group(1)], value)
        if value:
            env[key] = value
        else:
            del env[key]
    return env


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: fervid-entrypoint COMMAND [ARG...]")
    try:
        env = resolve(dict(os.environ))
    except EntrypointError as exc:
        print(f"fervid-entrypoint: {exc}", file=sys.stderr)
        sys.exit(2)
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main(sys.argv[1:])
