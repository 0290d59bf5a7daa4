"""A real RTSP server for the ingest tests and benchmark: Debian's GStreamer RTSP server (gst-rtsp-server).

Runs under the system Python (``/usr/bin/python3``), because PyGObject is not importable from the venv:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --clip clip.mp4 --mount cam --mount cam2 \\
        [--user u --password p] [--tls cert+key.pem]

Every mount serves the same clip, decoded once at start-up and looped forever, re-encoded live with
``x264enc tune=zerolatency`` (no B-frames, key frame every ``--gop`` frames) so every client gets clean,
monotonic timestamps at real time. With ``--encode-once`` the loop is encoded once at start-up and each mount
only sends the stored H.264 access units at real time, as a camera's own encoder would: a benchmark then measures
fervid, not N x264 encoders on the same cores. Prints ``READY <port>`` on stdout when it accepts connections.
Needs: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-{plugins-base,plugins-good,plugins-bad,plugins-ugly}.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtspServer  # noqa: E402  (after require_version, as gi demands)


def load_clip(path: str) -> tuple[list[bytes], int, int, int]:
    """Decode `path` to raw BGR frames with GStreamer; returns (frames, width, height, fps)."""
    pipe = Gst.parse_launch(
        f'filesrc location="{path}" ! decodebin ! videoconvert ! video/x-raw,format=BGR ! appsink name=sink sync=false'
    )
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    width = height = 0
    fps = 30
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        s = sample.get_caps().get_structure(0)
        width, height = s.get_value("width"), s.get_value("height")
        ok, num, den = s.get_fraction("framerate")
        if ok and num and den:
            fps = max(1, round(num / den))
        buf = sample.get_buffer()
        frames.append(buf.extract_dup(0, buf.get_size()))
    pipe.set_state(Gst.State.NULL)
    if not frames:
        raise SystemExit(f"rtsp_server: no frames decoded from {path}")
    return frames, width, height, fps


def _encoder(gop: int, slices: int) -> str:
    # tune=zerolatency encodes one slice per thread, and x264 picks the thread count from the machine's cores;
    # `slices` fixes it (as many IP cameras do: each slice travels in its own RTP packets).
    extra = f"threads={slices} " if slices else ""
    return (
        "videoconvert ! video/x-raw,format=I420 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max={gop} {extra}"
    )


def _raw_caps(width: int, height: int, fps: int) -> str:
    return f"video/x-raw,format=BGR,width={width},height={height},framerate={fps}/1"


def encode_once(frames: list[bytes], width: int, height: int, fps: int, gop: int, slices: int) -> list[bytes]:
    """The loop as H.264 access units (byte-stream), the first one a key frame, so that looping them plays on."""
    pipe = Gst.parse_launch(
        f"appsrc name=src format=time caps={_raw_caps(width, height, fps)} ! {_encoder(gop, slices)} "
        "! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au "
        "! appsink name=sink sync=false"
    )
    src, sink = pipe.get_by_name("src"), pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    duration = Gst.SECOND // fps
    for n, frame in enumerate(frames):
        buf = Gst.Buffer.new_wrapped(frame)
        buf.pts, buf.duration = n * duration, duration
        src.emit("push-buffer", buf)
    src.emit("end-of-stream")
    units: list[bytes] = []
    while (sample := sink.emit("pull-sample")) is not None:
        buf = sample.get_buffer()
        units.append(buf.extract_dup(0, buf.get_size()))
    pipe.set_state(Gst.State.NULL)
    if len(units) != len(frames):
        raise SystemExit(f"rtsp_server: encoded {len(units)} access units from {len(frames)} frames")
    return units


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    def __init__(
        self, frames: list[bytes], width: int, height: int, fps: int, gop: int, slices: int = 0, encoded: bool = False
    ) -> None:
        """`frames`: raw BGR frames, encoded live; or, when `encoded`, H.264 access units sent as they are."""
        super().__init__()
        self.frames, self.width, self.height, self.fps = frames, width, height, fps
        if encoded:
            source = "caps=video/x-h264,stream-format=byte-stream,alignment=au"
        else:
            source = f"caps={_raw_caps(width, height, fps)} ! {_encoder(gop, slices)}"
        self.set_launch(
            f"( appsrc name=src is-live=true format=time do-timestamp=false {source} "
            "! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        self.set_shared(True)  # one pipeline (and encoder) per mount, however many clients
        self.connect("media-configure", self._configure)

    def _configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_child_by_name("src")
        state = {"n": 0}
        duration = Gst.SECOND // self.fps

        def need_data(appsrc: Gst.Element, _length: int) -> None:
            n = state["n"]
            buf = Gst.Buffer.new_wrapped(self.frames[n % len(self.frames)])
            buf.pts = n * duration
            buf.duration = duration
            state["n"] = n + 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1", help="bind address (deploy/smoke.sh: containers' gateway)")
    parser.add_argument("--clip", required=True)
    parser.add_argument("--mount", action="append", default=[], help="mount name (repeatable); default 'cam'")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--gop", type=int, default=15)
    parser.add_argument("--slices", type=int, default=0, help="H.264 slices per frame (default: x264's choice)")
    parser.add_argument(
        "--encode-once", action="store_true", help="encode the loop once at start-up; mounts send the stored H.264"
    )
    parser.add_argument(
        "--tls", help="PEM file with a certificate and its private key: serve rtsps:// (needs glib-networking)"
    )
    args = parser.parse_args()

    Gst.init(None)
    frames, width, height, fps = load_clip(args.clip)
    if args.encode_once:
        frames = encode_once(frames, width, height, fps, args.gop, args.slices)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    auth_role = "fervid-test"
    secured = bool(args.user or args.tls)
    if secured:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, auth_role)
        if args.user:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        else:
            auth.set_default_token(token)  # TLS only: anyone who completes the handshake may watch
        if args.tls:
            # RTSP over TLS (rtsps://): every connection to this port must do the TLS handshake first.
            auth.set_tls_certificate(Gio.TlsCertificate.new_from_file(args.tls))
        server.set_auth(auth)
    for name in args.mount or ["cam"]:
        factory = LoopingFactory(frames, width, height, fps, args.gop, args.slices, encoded=args.encode_once)
        if secured:
            perms = GstRtspServer.RTSPPermissions()
            perms.add_role_from_structure(
                Gst.Structure.new_from_string(
                    f"{auth_role}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )
            )
            factory.set_permissions(perms)
        mounts.add_factory(f"/{name}", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}")
    print(f"READY {server.get_bound_port()}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        GLib.MainLoop().run()


if __name__ == "__main__":
    sys.exit(main())
