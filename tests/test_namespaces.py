"""Deployments sharing one Redis never see each other's frames: every key lives under the deployment's namespace,
and `fervid demo --redis R` keeps to a namespace of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from fervid.bus import Bus, private_namespace
from fervid.contracts import DETECTOR_GROUP
from fervid.pipeline import run_pipeline
from fervid.settings import load_settings
from ingest.runner import SourceSpec, run_source

pytestmark = pytest.mark.slow

FERVID = [sys.executable, "-m", "fervid"]
FPS = 5  # the 2 s sample clip analysed at 5 fps: 10 frames


def stored(db: Path) -> dict[str, list[int]]:
    """Frame sequence numbers stored per camera in a SQLite file."""
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("select camera, seq from frames order by camera, seq")).all()
    finally:
        engine.dispose()
    out: dict[str, list[int]] = {}
    for camera, seq in rows:
        out.setdefault(camera, []).append(seq)
    return out


def test_a_demo_and_a_deployment_on_one_redis_each_store_exactly_their_own_cameras(
    redis_url: str, redis_client: redis.Redis, sample_clip: Any, tmp_path: Path
) -> None:
    clip, _ = sample_clip
    production = load_settings(data_dir=tmp_path / "prod", redis_url=redis_url)  # namespace "fervid"
    # Production's ingest has published a camera its detectors have not read yet (they are busy, or down).
    lobby = SourceSpec("lobby", str(clip), fps=FPS)
    assert run_source(Bus.from_settings(redis_client, "ingest", production), lobby, production).published == 10

    # A demo on the same Redis: a namespace of its own, so it stores its camera and leaves production's alone.
    env = {k: v for k, v in os.environ.items() if k not in ("FERVID_NAMESPACE", "FERVID_REDIS_URL")}
    demo_dir = tmp_path / "demo"
    demo = subprocess.run(
        [
            *FERVID,
            "demo",
            str(clip),
            "--camera",
            "kiosk",
            "--fps",
            str(FPS),
            "--redis",
            redis_url,
            "--data-dir",
            str(demo_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    namespace = (demo_dir / "namespace").read_text().strip()
    assert namespace.startswith("demo-") and f"namespace {namespace}" in " ".join(demo.stderr.split())
    assert stored(demo_dir / "fervid.db") == {"kiosk": list(range(10))}
    probe = Bus.from_settings(redis_client, "probe", production)
    assert probe.backlog(production.keys.frames("lobby"), DETECTOR_GROUP) == 10  # untouched

    # Production runs its own namespace: its cameras, all of them, and nothing of the demo's.
    summary = run_pipeline([lobby, SourceSpec("door", str(clip), fps=FPS)], production, redis_url)
    assert summary.frames_published == 20
    assert stored(tmp_path / "prod" / "fervid.db") == {"lobby": list(range(20)), "door": list(range(10))}

    # Every key either deployment wrote is under its namespace.
    keys = {k.decode() for k in redis_client.keys("*")}
    assert keys and all(k.startswith(("fervid:", f"{namespace}:")) for k in keys), sorted(keys)
    assert redis_client.smembers(f"{namespace}:cameras") == {b"kiosk"}
    assert redis_client.smembers("fervid:cameras") == {b"lobby", b"door"}


def test_a_data_dir_keeps_its_namespace(tmp_path: Path) -> None:
    first = private_namespace(tmp_path / "a")
    assert first == private_namespace(tmp_path / "a")  # the next run continues the same cameras' sequences
    assert first != private_namespace(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "namespace").write_text("not a valid namespace!\n")
    assert private_namespace(tmp_path / "c").startswith("demo-")  # a damaged file is replaced, not trusted
