"""Every benchmark runs with the command its docstring gives: `uv run python bench/NAME.py --help` imports it
(a script named like a package would shadow that package) and prints its usage, which names this very file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))
PACKAGES = {p.parent.name for p in ROOT.glob("*/__init__.py")}


def test_no_script_shadows_a_package() -> None:
    assert SCRIPTS and {s.stem for s in SCRIPTS} & PACKAGES == set()


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_help(script: Path) -> None:
    # As `uv run python bench/NAME.py` runs it: from the repository root, the script's folder first on the path.
    result = subprocess.run(
        [sys.executable, f"bench/{script.name}", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and f"uv run python bench/{script.name}" in result.stdout
