"""A small process supervisor: the compose topology as OS processes on one machine, without Docker.

Each worker is ``python -m fervid <command>`` in its own session (so a terminal's Ctrl-C reaches only the
supervisor, which then stops the workers in order), configured by environment variables exactly as compose
configures the containers. A worker that dies is restarted with jittered exponential backoff
(:class:`fervid.backoff.Backoff`; one that stayed up 30 s starts from the shortest delay again). A *one-shot*
worker (file ingest) that exits 0 is done; one that fails is not restarted, because replaying a file would
publish its frames again under new sequence numbers.

Stopping: SIGTERM to every worker (each finishes or returns its batch; one still starting exits 0 as soon as it
can take the signal, :func:`worker_preexec`), up to ``stop_timeout`` seconds, then SIGKILL for any still alive.
Workers never outlive the supervisor: on Linux each gets SIGTERM from the kernel when the supervisor dies, however
it dies (:func:`die_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fervid.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass
class ProcessSpec:
    name: str
    args: list[str]  # after `python -m fervid`
    env: dict[str, str] = field(default_factory=dict)
    oneshot: bool = False


@dataclass
class Child:
    spec: ProcessSpec
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, cap=30.0, stable_after=30.0))
    proc: subprocess.Popen[bytes] | None = None
    state: str = "pending"  # pending, running, backoff, done, failed, stopped
    restarts: int = 0
    last_rc: int | None = None
    next_start: float = 0.0
    log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(
        self,
        specs: list[ProcessSpec],
        *,
        env: dict[str, str],
        log_dir: Path,
        stop_timeout: float = 10.0,
        status_file: Path | None = None,
        on_status: Callable[[str], None] = print,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate process names in {names}")
        self.children = [Child(s) for s in specs]
        self.env = env
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.status_file = status_file
        self.on_status = on_status
        self.stopping = False

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._spawn(child)
        self._write_status()

    def poll(self) -> None:
        """Reap exited workers, schedule restarts, start those whose backoff has passed."""
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.state == "running" and child.proc is not None and child.proc.poll() is not None:
                changed = True
                child.last_rc = child.proc.returncode
                child.backoff.mark_down()
                if self.stopping:
                    child.state = "stopped"
                elif child.spec.oneshot:
                    child.state = "done" if child.last_rc == 0 else "failed"
                    self._status(child, f"exited rc={child.last_rc} ({child.state})")
                else:
                    delay = child.backoff.next_delay()
                    child.state, child.next_start = "backoff", now + delay
                    self._status(child, f"exited rc={_describe_rc(child.last_rc)}; restarting in {delay:.1f}s")
            elif child.state == "backoff" and now >= child.next_start and not self.stopping:
                child.restarts += 1
                self._spawn(child)
                changed = True
        if changed:
            self._write_status()

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to all, wait up to `stop_timeout`, SIGKILL the rest. Returns each worker's exit code."""
        self.stopping = True
        alive = [c for c in self.children if c.alive()]
        for c in alive:
            self._signal(c, signal.SIGTERM)
        if alive:
            self.on_status(f"[up] stopping {len(alive)} workers (SIGTERM; SIGKILL after {self.stop_timeout:.0f}s)")
        deadline = time.monotonic() + self.stop_timeout
        try:
            while any(c.alive() for c in alive) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:  # also on a second Ctrl-C: never leave workers behind
            for c in alive:
                if c.proc is not None and c.alive():
                    self._status(c, "did not stop in time: SIGKILL")
                    self._signal(c, signal.SIGKILL)
                    c.proc.wait()
        for c in self.children:
            if c.proc is not None and c.state in ("running", "backoff"):
                c.last_rc = c.proc.returncode
                c.state = "stopped"
                self._status(c, f"stopped rc={_describe_rc(c.last_rc)}")
            elif c.state in ("pending", "backoff"):
                c.state = "stopped"
            if c.log_file:
                c.log_file.close()
                c.log_file = None
        self._write_status()
        return {c.spec.name: c.last_rc for c in self.children}

    def run(
        self, should_stop: Callable[[], bool], until: Callable[[], bool] | None = None, interval: float = 0.2
    ) -> None:
        """Supervise until `should_stop()` (a signal) or `until()` (e.g. drained); the caller calls :meth:`stop`."""
        while not should_stop():
            self.poll()
            if until is not None and until():
                return
            time.sleep(interval)

    # -- queries -----------------------------------------------------------------------------------------

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.spec.name == name)

    def oneshots_done(self) -> bool:
        return all(c.state == "done" for c in self.children if c.spec.oneshot)

    def failed(self) -> list[Child]:
        return [c for c in self.children if c.state == "failed"]

    # -- internals ---------------------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, **self.env, **child.spec.env, "PYTHONUNBUFFERED": "1"}
        if child.log_file is None:
            child.log_file = open(self.log_dir / f"{child.spec.name}.log", "ab")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "fervid", *child.spec.args]
        child.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=child.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=worker_preexec(),
        )
        child.state = "running"
        child.backoff.mark_up()
        self._status(
            child,
            f"started: fervid {' '.join(child.spec.args)}" + (f" (restart {child.restarts})" if child.restarts else ""),
        )

    def _signal(self, child: Child, sig: signal.Signals) -> None:
        if child.proc is None:  # never started
            return
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(sig)

    def _status(self, child: Child, what: str) -> None:
        self.on_status(f"[up] {child.spec.name:<14} pid {child.pid or '-':<7} {what}")

    def _write_status(self) -> None:
        if self.status_file is None:
            return
        data = {
            c.spec.name: {
                "pid": c.pid,
                "state": c.state,
                "restarts": c.restarts,
                "last_rc": c.last_rc,
                "args": c.spec.args,
            }
            for c in self.children
        }
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.status_file)


def die_with_parent() -> Callable[[], None] | None:
    """A Popen ``preexec_fn`` for a child that must not outlive this process: on Linux the kernel sends it SIGTERM
    when the thread that started it dies, SIGKILL included (PR_SET_PDEATHSIG); if this process died before the
    child got that far, the child exits at once. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def worker_preexec() -> Callable[[], None]:
    """The Popen ``preexec_fn`` of a worker: it dies with this process (:func:`die_with_parent`), and it starts
    with SIGTERM blocked until its command installs a handler (:func:`fervid.signals.handle_stop_signals`). A stop
    sent while the worker is still starting waits until it can be taken: the worker exits 0, not killed (-15)."""
    die = die_with_parent()

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # kept across exec
        if die is not None:
            die()

    return preexec


def _describe_rc(rc: int | None) -> str:
    if rc is None or rc >= 0:
        return str(rc)
    try:
        return f"{rc} ({signal.Signals(-rc).name})"
    except ValueError:
        return str(rc)
