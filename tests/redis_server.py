"""A real Redis 7 server (Debian's ``redis-server``, what compose runs) for the fault tests: a free port, AOF in its
own directory, its own process group; stopped (SIGTERM) or killed (SIGKILL) and restarted on the same port and
data, as an operator's outage would. Never skipped: without the package the tests fail and say how to install it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

REDIS_SERVER = os.environ.get("TEST_REDIS_SERVER", "/usr/bin/redis-server")
APT_HINT = "apt-get install -y --no-install-recommends redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server on 127.0.0.1:`port` with its AOF under `workdir`.

    ``appendfsync always``: every write a client saw acknowledged is on disk, so a kill -9 loses nothing (with
    compose's ``everysec``, a crash can lose up to the last second of writes).
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if not Path(REDIS_SERVER).exists():
            raise AssertionError(f"{REDIS_SERVER} is missing: {APT_HINT}")
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> RedisServer:
        """Start (or restart on the same port and AOF) and wait until it answers with its data loaded."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child holds it; closed here below
        try:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError):  # BusyLoadingError is one: still loading
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not answer within {timeout}s: {self.log_tail()}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown: the AOF is flushed) or SIGKILL (a crash), and wait until it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.workdir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "no log"
