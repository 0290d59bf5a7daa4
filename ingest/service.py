"""Many cameras in one process: one :class:`CameraRunner` thread per camera, a heartbeat, and reload.

A slow or dead camera only ever blocks its own thread (every read has a timeout). :meth:`IngestService.reload`
applies a new camera list: unchanged cameras keep running untouched; removed or changed ones are stopped; a
changed camera's replacement starts only once the old thread has exited, so two threads never publish the
same camera's sequence numbers at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from fervid.bus import redact_url
from fervid.errors import FervidError
from fervid.settings import Settings
from ingest.camera import HEARTBEAT_S, CameraRunner, CameraStatus
from ingest.cameras import CameraConfig, load_cameras

log = logging.getLogger(__name__)


class IngestService:
    def __init__(
        self, client: redis.Redis, settings: Settings, runner_factory: Callable[..., CameraRunner] = CameraRunner
    ) -> None:
        self.client = client
        self.settings = settings
        self.runners: dict[str, CameraRunner] = {}
        self._retiring: list[CameraRunner] = []
        self._pending: dict[str, CameraConfig] = {}  # replacements waiting for their old thread to exit
        self._factory = runner_factory

    def apply(self, configs: list[CameraConfig]) -> dict[str, list[str]]:
        """Start, stop and restart cameras so that the enabled ones of `configs` run. Returns what changed."""
        wanted = {c.name: c for c in configs if c.enabled}
        changes: dict[str, list[str]] = {"started": [], "stopped": [], "restarted": [], "unchanged": []}
        for name, runner in list(self.runners.items()):
            if name not in wanted:
                runner.stop()
                self._retiring.append(self.runners.pop(name))
                self._pending.pop(name, None)
                changes["stopped"].append(name)
        for name, cfg in wanted.items():
            current = self.runners.get(name)
            if current is not None and current.config == cfg:
                changes["unchanged"].append(name)
                continue
            if current is not None:
                current.stop()
                self._retiring.append(self.runners.pop(name))
                changes["restarted"].append(name)
            else:
                changes["started"].append(name)
            self._pending[name] = cfg
        self._start_pending()
        for what, names in changes.items():
            if names and what != "unchanged":
                log.info("cameras %s: %s", what, ", ".join(sorted(names)))
        return changes

    def _start_pending(self) -> None:
        busy = {r.config.name for r in self._retiring if r.is_alive()}
        self._retiring = [r for r in self._retiring if r.is_alive()]
        for name in [n for n in self._pending if n not in busy]:
            cfg = self._pending.pop(name)
            runner = self._factory(cfg, self.client, self.settings)
            self.runners[name] = runner
            log.info("%s: starting (%s)", name, redact_url(cfg.url))
            runner.start()

    def tick(self) -> None:
        """Heartbeat: refresh every camera's state in Redis (and its TTL); start replacements that can start."""
        self._start_pending()
        for runner in list(self.runners.values()):
            runner.publish_state()

    def statuses(self) -> list[CameraStatus]:
        return [r.snapshot() for r in self.runners.values()]

    def stop(self, timeout: float = 5.0) -> None:
        runners = list(self.runners.values()) + self._retiring
        for r in runners:
            r.stop()
        deadline = time.monotonic() + timeout
        for r in runners:
            r.join(max(0.0, deadline - time.monotonic()))
        for r in runners:
            r.publish_state()
        self.runners.clear()
        self._pending.clear()


def serve(
    client: redis.Redis,
    settings: Settings,
    config_path: Path,
    *,
    should_stop: Callable[[], bool],
    heartbeat_s: float = HEARTBEAT_S,
) -> None:
    """Run the cameras of `config_path` until `should_stop`; SIGHUP re-reads the file and applies it.

    A config file that has become invalid on reload is reported and ignored: the running cameras go on.
    """
    service = IngestService(client, settings)
    service.apply(load_cameras(config_path))
    reload = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
        previous = signal.signal(signal.SIGHUP, lambda *_: reload.set())
    try:
        while not should_stop():
            if reload.is_set():
                reload.clear()
                try:
                    changes = service.apply(load_cameras(config_path))
                    log.warning("reloaded %s: %s", config_path, {k: v for k, v in changes.items() if v})
                except FervidError as exc:
                    log.error("reload of %s failed, keeping the running cameras: %s", config_path, exc)
            service.tick()
            time.sleep(heartbeat_s)
    finally:
        service.stop()
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
