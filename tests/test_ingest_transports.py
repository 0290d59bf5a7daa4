"""Per-camera transport options against the real GStreamer RTSP server: RTP over UDP, RTSP over TLS (rtsps://,
self-signed certificate, verification on and off), hardware decoding falling back to software, and key frames
that arrive one slice per packet decoded whole."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import redis
from av.codec.hwaccel import hwdevices_available
from rtsp_fixtures import RtspServer, ServerFactory
from waiting import wait_for

from fervid.bus import iter_entries
from fervid.contracts import FrameMsg, Keys
from fervid.errors import ConfigError
from ingest.cameras import CameraConfig, parse_cameras
from ingest.service import IngestService

KEYS = Keys()  # the default namespace


def udp_sockets_of_this_process() -> int:
    """UDP sockets open in this process (RTP/RTCP receivers), from /proc: proof that UDP is really in use."""
    inodes = set()
    for name in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/self/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        inodes |= {line.split()[9] for line in lines}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        count += target.startswith("socket:[") and target[8:-1] in inodes
    return count


def test_udp_transport_receives_rtp_over_udp(
    service: IngestService, rtsp_server_factory: ServerFactory, redis_client: redis.Redis
) -> None:
    server = rtsp_server_factory(("cam",))
    assert udp_sockets_of_this_process() == 0
    service.apply([CameraConfig(name="udpcam", url=server.url(), fps=10, transport="udp")])
    runner = service.runners["udpcam"]
    wait_for("frames over UDP", lambda: runner.snapshot().frames >= 5, 15)
    assert runner.snapshot().state == "live"
    assert udp_sockets_of_this_process() >= 1, "transport: udp, but no UDP socket is open: RTP came over TCP"
    service.stop()
    assert udp_sockets_of_this_process() == 0


@pytest.mark.parametrize(
    ("options", "state", "message"),
    [
        ({"tls_verify": False}, "live", ""),
        ({"tls_ca_file": "CERT"}, "live", ""),  # the camera's own certificate, trusted explicitly
        ({}, "backing_off", "TLS handshake failed"),  # verified against the system CAs: self-signed is refused
    ],
    ids=["verify-off", "trusted-ca-file", "verify-on-refused"],
)
def test_rtsps_with_a_self_signed_certificate(
    service: IngestService,
    rtsp_server_factory: ServerFactory,
    self_signed_pem: Path,
    options: dict,
    state: str,
    message: str,
    redis_client: redis.Redis,
) -> None:
    server = rtsp_server_factory(("cam",), "viewer", "tls-pw", tls=self_signed_pem)
    assert server.url().startswith("rtsps://viewer:tls-pw@")
    options = {k: str(self_signed_pem.with_name("cert.pem")) if v == "CERT" else v for k, v in options.items()}
    service.apply([CameraConfig(name="tls", url=server.url(), fps=10, open_timeout=3, **options)])
    runner = service.runners["tls"]
    wait_for(f"state {state}", lambda: runner.snapshot().state == state and message in runner.snapshot().last_error, 15)
    if state == "live":
        wait_for("frames over TLS", lambda: runner.snapshot().frames >= 3, 10)
        frame = FrameMsg.decode(next(iter_entries(redis_client, KEYS.frames("tls")))[1]).frame
        assert (frame.width, frame.height) == (640, 480)
    else:
        assert runner.snapshot().frames == 0
        assert "tls_verify: false" in runner.snapshot().last_error and "tls-pw" not in runner.snapshot().last_error


def test_tls_and_transport_options_are_checked_against_the_url() -> None:
    with pytest.raises(ConfigError, match="tls_verify and tls_ca_file apply to rtsps:// cameras only"):
        parse_cameras("cameras: [{name: a, url: 'rtsp://h/x', tls_verify: false}]")
    with pytest.raises(ConfigError, match="transport applies to RTSP cameras only"):
        parse_cameras("cameras: [{name: a, url: /dev/video0, transport: udp}]")
    with pytest.raises(ConfigError, match=r"unknown hardware decoder 'cude'; FFmpeg knows: .*cuda.*vaapi"):
        parse_cameras("cameras: [{name: a, url: 'rtsp://h/x', hwaccel: cude}]")
    (cam,) = parse_cameras("cameras: [{name: a, url: 'rtsps://h/x', tls_verify: false, hwaccel: cuda, transport: udp}]")
    assert not cam.tls_verify and cam.hwaccel == "cuda"


def _has_nvidia_gpu() -> bool:
    return any(p.name.startswith("nvidia") and p.name[6:].isdigit() for p in Path("/dev").glob("nvidia*"))


@pytest.mark.parametrize("kind", ["cuda", "vaapi"])
def test_hwaccel_falls_back_to_software_with_a_clear_message(
    kind: str,
    service: IngestService,
    rtsp_server: RtspServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """cuda is in PyAV's FFmpeg build but this machine has no GPU; vaapi is not in the build at all. Either way
    the camera decodes in software and the log says why, once."""
    caplog.set_level(logging.WARNING)
    built = hwdevices_available()
    service.apply([CameraConfig(name=f"hw{kind}", url=rtsp_server.url("cam2"), fps=10, hwaccel=kind)])
    runner = service.runners[f"hw{kind}"]
    wait_for("frames decoded in software", lambda: runner.snapshot().frames >= 3, 15)
    if kind == "cuda" and _has_nvidia_gpu():  # a machine with a GPU decodes on it: no fallback to report
        assert "decoding in software" not in caplog.text
        return
    if kind in built:
        expected = f"hardware decoding '{kind}' is unavailable: cannot open the device"
    else:
        expected = f"hardware decoding '{kind}' is not in this FFmpeg build (it has: {', '.join(built)})"
    warnings = [r.getMessage() for r in caplog.records if "decoding in software" in r.getMessage()]
    assert len(warnings) == 1 and expected in warnings[0], warnings
    assert "s3cret-pw" not in caplog.text and "rtsp://***@127.0.0.1" in warnings[0]


def test_key_frames_sent_one_slice_per_packet_decode_whole(rtsp_server_factory, rtsp_clip: Path) -> None:  # type: ignore[no-untyped-def]
    """Four slices per frame, and GStreamer's RTP payloader repeats SPS/PPS before each slice of a key frame, so
    each key frame reaches the decoder as four packets. Every frame ingest decodes must still be a whole frame
    of the clip: half-decoded key frames (and the GOP built on them) showed up as gray blocks and ghost faces."""
    import av
    import cv2
    import numpy as np

    from ingest.frames import sampled
    from ingest.source import open_container

    def small(image: np.ndarray) -> np.ndarray:
        return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (160, 120), interpolation=cv2.INTER_AREA)

    with av.open(str(rtsp_clip)) as clip:
        originals = np.stack([small(f.to_ndarray(format="bgr24")) for f in clip.decode(video=0)]).astype(np.float32)
    server = rtsp_server_factory(("cam",), slices=4)
    url = server.url()
    live = []
    with open_container(url) as container:
        for frame in sampled(container, url, fps=None):
            live.append(small(frame.image))
            if len(live) == 45:  # 1.5 s at 30 fps: three key frames (the server's GOP is 15 frames)
                break
    psnr = []
    for image in live:  # against the clip frame it is (the best match), in dB
        mse = ((originals - image.astype(np.float32)) ** 2).mean(axis=(1, 2)).min()
        psnr.append(10 * np.log10(255**2 / max(mse, 1e-6)))
    broken = [(i, round(float(p), 1)) for i, p in enumerate(psnr) if p < 28]
    assert not broken, f"frames that are no frame of the clip (index, PSNR dB): {broken}"
