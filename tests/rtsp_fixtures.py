"""Fixtures for a real RTSP server (tests/rtsp_server.py, GStreamer, run under the system Python).

Loaded by tests/conftest.py with ``from rtsp_fixtures import *``. Needs the Debian packages listed in
tests/rtsp_server.py; when they are missing the tests that use these fixtures FAIL (they are never skipped).
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from fervid.backoff import Backoff
from fervid.settings import Settings
from ingest.camera import STABLE_AFTER_S, CameraRunner
from ingest.cameras import CameraConfig
from ingest.service import IngestService

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = os.environ.get("FERVID_GST_PYTHON", "/usr/bin/python3")
APT_HINT = (
    "apt-get install -y --no-install-recommends python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly "
    "glib-networking openssl"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """One gst-rtsp-server process serving `clip` on `mounts`, looping; can be SIGKILLed and restarted on its port."""

    def __init__(
        self,
        clip: Path,
        mounts: tuple[str, ...] = ("cam",),
        user: str | None = None,
        password: str | None = None,
        port: int | None = None,
        tls: Path | None = None,
        slices: int = 0,
        encode_once: bool = False,
    ) -> None:
        self.clip, self.mounts, self.user, self.password, self.tls = clip, mounts, user, password, tls
        self.slices = slices  # H.264 slices per frame (0: x264's choice, one per encoder thread)
        self.encode_once = encode_once  # mounts send H.264 encoded at start-up (no live encoder per mount)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, mount: str = "cam", user: str | None = None, password: str | None = None) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        auth = f"{user}:{password}@" if user else ""
        return f"{'rtsps' if self.tls else 'rtsp'}://{auth}127.0.0.1:{self.port}/{mount}"

    def start(self, timeout: float = 20.0) -> RtspServer:
        cmd = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--clip", str(self.clip)]
        for m in self.mounts:
            cmd += ["--mount", m]
        if self.user:
            cmd += ["--user", self.user, "--password", self.password or ""]
        if self.tls:
            cmd += ["--tls", str(self.tls)]
        if self.slices:
            cmd += ["--slices", str(self.slices)]
        if self.encode_once:
            cmd.append("--encode-once")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline().decode()
                if line.startswith("READY"):
                    return self
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else ""
                pytest.fail(f"RTSP test server exited ({self.proc.returncode}): {err}\nCI needs: {APT_HINT}")
        # A restart right after a SIGKILL can find the port in use for a moment; that is a failure here.
        self.kill()
        pytest.fail(f"RTSP test server did not become ready on port {self.port} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-stream, as a crashed camera does."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


# rtsp_server_factory's value: make(mounts=("cam",), user=None, password=None, tls=None, slices=0,
# encode_once=False) -> a started server.
ServerFactory = Callable[..., RtspServer]


@pytest.fixture(scope="session")
def rtsp_clip(sample_clip: tuple[Path, object]) -> Path:
    """The H.264 clip (no B-frames, short GOP) the RTSP server serves, looping."""
    return sample_clip[0]


@pytest.fixture
def rtsp_server_factory(rtsp_clip: Path) -> Iterator[ServerFactory]:
    """Make and start servers; every one is killed at teardown."""
    servers: list[RtspServer] = []

    def make(
        mounts: tuple[str, ...] = ("cam",),
        user: str | None = None,
        password: str | None = None,
        tls: Path | None = None,
        slices: int = 0,
        encode_once: bool = False,
    ) -> RtspServer:
        server = RtspServer(rtsp_clip, mounts, user, password, tls=tls, slices=slices, encode_once=encode_once)
        servers.append(server)
        return server.start()

    yield make
    for s in servers:
        s.kill()


@pytest.fixture(scope="session")
def rtsp_server(rtsp_clip: Path) -> Iterator[RtspServer]:
    """A shared server with Basic auth (user ``viewer``, password ``s3cret-pw``), mounts ``cam`` and ``cam2``."""
    server = RtspServer(rtsp_clip, ("cam", "cam2"), "viewer", "s3cret-pw").start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def self_signed_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 and its key, in one PEM file (openssl, as CI installs it)."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    pem = d / "server.pem"
    pem.write_bytes((d / "cert.pem").read_bytes() + (d / "key.pem").read_bytes())
    return pem


@pytest.fixture
def service(redis_client: redis.Redis, settings: Settings) -> Iterator[IngestService]:
    """An IngestService (as `fervid ingest` runs cameras), stopped at teardown."""
    # Seeded jitter: the real policy (0.5 s doubling to 30 s, full jitter), reproducible timings.
    rng = random.Random(7)

    def factory(cfg: CameraConfig, client: redis.Redis, s: Settings) -> CameraRunner:
        return CameraRunner(
            cfg, client, s, backoff=Backoff(initial=0.5, cap=30.0, stable_after=STABLE_AFTER_S, rng=rng)
        )

    svc = IngestService(redis_client, settings, runner_factory=factory)
    yield svc
    svc.stop(timeout=3)
