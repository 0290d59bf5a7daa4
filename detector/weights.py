"""Model-weight files: find them locally, in the cache, or download them once; verify checksums.

`resolve_weights` is the one place that touches the network for weights. Offline, it fails with a
`WeightsError` whose one-line message says where it looked and how to provide the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ENV_WEIGHTS_DIR = "FERVID_WEIGHTS_DIR"
# Set to 1 to never download (resolve_weights then only looks at `path` and the cache).
ENV_OFFLINE = "FERVID_OFFLINE"


class WeightsError(RuntimeError):
    """Weights missing, not downloadable, corrupt, or of the wrong architecture."""


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/fervid/weights").expanduser()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, sha256: str | None) -> None:
    """Check `path` against `sha256`: a full 64-hex digest, or a prefix of at least 8 hex digits
    (torch.hub-style file names carry such a prefix, e.g. `...-f168fae3c.zip`)."""
    if not sha256:
        return
    expected = sha256.lower()
    if len(expected) < 8:
        raise ValueError(f"sha256 prefix too short to be meaningful: {sha256!r}")
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise WeightsError(
            f"Checksum mismatch for {path}: sha256 {actual} does not match expected {expected}; "
            f"delete the file and provide the right one."
        )


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0", "false", "no")


def resolve_weights(
    name: str,
    url: str | None,
    sha256: str | None,
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    timeout: float = 30.0,
) -> Path:
    """Return a local, checksum-verified path to the weights file `name`.

    Order: an explicit `path` (must exist), then `<cache_dir>/<file name of url or name>`, then a download of
    `url` into the cache (skipped when `download=False` or `$FERVID_OFFLINE` is set).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsError(f"Weights file for {name} not found at {p} (passed as weights=...).")
        verify_sha256(p, sha256)
        return p

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    filename = Path(urlparse(url).path).name if url else name
    target = cache / filename
    if target.is_file():
        verify_sha256(target, sha256)
        return target

    how = (
        f"download {url} yourself and put it at {target} (or set ${ENV_WEIGHTS_DIR}), or pass weights=PATH"
        if url
        else f"put the file at {target} (or set ${ENV_WEIGHTS_DIR}), or pass weights=PATH"
    )
    if download is None:
        download = not _offline()
    if not url or not download:
        raise WeightsError(f"Weights for {name} not found: looked in {target}; {how}.")

    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=cache)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        verify_sha256(Path(tmp_name), sha256)
        os.replace(tmp_name, target)
    except WeightsError:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        Path(tmp_name).unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"Weights for {name} not found in {target} and download from {url} failed ({reason}); {how}."
        ) from exc
    return target
