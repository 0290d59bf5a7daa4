"""No process left behind: a command that fails, is interrupted or is killed leaves no embedded redis-server and no
worker running.

Every command runs with a tag in its environment, which its children inherit (`fervid up`'s workers), in a
directory of its own, where the embedded redis-server works (Redis overwrites its environment with its process
title, so it is found by its working directory); afterwards no such process may be left. A child that outlived
its parent would be reparented and invisible in the process tree, but not to this search.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from waiting import wait_for

pytestmark = pytest.mark.slow

FERVID = [sys.executable, "-m", "fervid"]


@dataclass(frozen=True)
class Tag:
    env: str  # TEST_FERVID_TAG in the command's environment
    root: Path  # its working directory and data dir live here


def tagged(tag: Tag) -> list[psutil.Process]:
    """Live processes the command started (zombies awaiting their reaper are gone already)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("TEST_FERVID_TAG") == tag.env or Path(proc.cwd()).is_relative_to(tag.root):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
            continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:200]}")
        except psutil.Error:
            out.append(str(p.pid))
    return "; ".join(out)


def start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[str], Tag]:
    tag = Tag(uuid.uuid4().hex, tmp_path.resolve())
    env = {**os.environ, "TEST_FERVID_TAG": tag.env}
    env.pop("FERVID_REDIS_URL", None)  # the embedded Redis, always
    proc = subprocess.Popen(
        [*FERVID, *args, "--data-dir", str(tmp_path / "data")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, tag


def embedded_redis(tag: Tag) -> list[psutil.Process]:
    return [p for p in tagged(tag) if "redis-server" in p.name()]


def assert_none_left(tag: Tag, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (left := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"left behind: {describe(left)}"


@pytest.mark.parametrize(
    ("args", "fails_after_redis"),
    [
        # the model is loaded while the embedded Redis and the sources run: its failure has children to stop
        pytest.param(["demo", "{clip}", "--model", "densenet161"], True, id="demo-model-without-weights"),
        # checked before anything starts
        pytest.param(
            ["demo", "{clip}", "--db", "postgresql+psycopg://u@127.0.0.1:1/x"], False, id="demo-unreachable-db"
        ),
        pytest.param(["up", "--source", "missing.mp4", "--until-drained"], False, id="up-ingest-fails"),
        pytest.param(
            ["up", "--source", "{clip}", "--camera", "no spaces!", "--until-drained"], False, id="up-usage-error"
        ),
    ],
)
def test_a_failing_command_leaves_no_process(
    args: list[str], fails_after_redis: bool, sample_clip: Any, tmp_path: Path
) -> None:
    clip, _ = sample_clip
    proc, tag = start([a.format(clip=clip) for a in args], tmp_path)
    seen_redis = False
    try:
        while proc.poll() is None:
            seen_redis = seen_redis or bool(embedded_redis(tag))
            time.sleep(0.05)
        output = proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode not in (0, None), output[-2000:]
    if fails_after_redis:
        assert seen_redis, "the embedded Redis never started: the test proves nothing"
    assert_none_left(tag, within=1.0)  # stopped by the command itself, before it exited


def test_ctrl_c_during_model_load_leaves_no_process(sample_clip: Any, tmp_path: Path) -> None:
    clip, _ = sample_clip
    proc, tag = start(["demo", str(clip)], tmp_path)
    try:
        wait_for("the embedded Redis", lambda: embedded_redis(tag), 60, [proc])
        proc.send_signal(signal.SIGINT)  # the first finishes what is in hand (nothing yet) ...
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # ... the second stops at once
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, output[-2000:]
    assert_none_left(tag, within=1.0)


@pytest.mark.parametrize("command", ["demo", "up"])
def test_children_die_with_a_killed_command(command: str, sample_clip: Any, tmp_path: Path) -> None:
    """SIGKILL gives the command no chance to clean up: the kernel stops its children (a parent-death signal)."""
    clip, _ = sample_clip
    args = ["demo", str(clip)] if command == "demo" else ["up", "--source", str(clip)]
    proc, tag = start(args, tmp_path)
    try:
        wait_for("the embedded Redis", lambda: embedded_redis(tag), 60, [proc])
        if command == "up":
            wait_for("the workers", lambda: len(tagged(tag)) >= 4, 60, [proc])
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert_none_left(tag, within=15.0)
