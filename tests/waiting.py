"""Polling a condition in tests that run workers beside them (threads or OS processes)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def wait_for(
    what: str, cond: Callable[[], Any], timeout: float, watch: Sequence[subprocess.Popen[Any] | threading.Thread] = ()
) -> Any:
    """Poll `cond` until it returns something truthy, and return that. Fails after `timeout` s, or at once when a
    watched process or thread has ended: the condition could then only time out, and the error says why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        for w in watch:
            if isinstance(w, threading.Thread) and not w.is_alive():
                raise AssertionError(f"thread {w.name} stopped while waiting for {what}")
            if isinstance(w, subprocess.Popen) and w.poll() is not None:
                raise AssertionError(f"{w.args} exited with {w.returncode} while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
