"""The `fervid` command line run in a child process, as a user runs it (tests/ is on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FERVID = [sys.executable, "-c", "from fervid.cli import main; main()"]


def fervid(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FERVID, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
