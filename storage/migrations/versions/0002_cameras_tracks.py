"""cameras and per-track summaries, backfilled from existing rows

Revision ID: 0002_cameras_tracks
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_cameras_tracks"
down_revision = "0001_frames_events"
branch_labels = None
depends_on = None

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def upgrade() -> None:
    op.create_table(
        "cameras",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "tracks",
        sa.Column("camera", sa.String(64), primary_key=True),
        sa.Column("track_id", sa.BigInteger, primary_key=True),
        sa.Column("first_ts_ms", sa.BigInteger, nullable=False),
        sa.Column("last_ts_ms", sa.BigInteger, nullable=False),
        sa.Column("n_faces", sa.Integer, nullable=False),
        sa.Column("dominant", sa.String(16), nullable=False),
        *[sa.Column(f"mean_{e}", sa.Float, nullable=False) for e in EMOTIONS],
    )
    op.create_index("ix_tracks_camera_last", "tracks", ["camera", "last_ts_ms"])
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "INSERT INTO cameras (name, first_seen_ms, last_seen_ms) "
            "SELECT camera, min(ts_ms), max(ts_ms) FROM frames GROUP BY camera"
        )
    )
    means = ", ".join(f"avg(p_{e}) AS mean_{e}" for e in EMOTIONS)
    rows = bind.execute(
        sa.text(
            f"SELECT camera, track_id, min(ts_ms) AS lo, max(ts_ms) AS hi, count(*) AS n, {means} "
            "FROM events WHERE track_id IS NOT NULL GROUP BY camera, track_id"
        )
    ).all()
    if rows:
        tracks = sa.table(
            "tracks",
            *[
                sa.column(c)
                for c in [
                    "camera",
                    "track_id",
                    "first_ts_ms",
                    "last_ts_ms",
                    "n_faces",
                    "dominant",
                    *[f"mean_{e}" for e in EMOTIONS],
                ]
            ],
        )
        values = []
        for r in rows:
            m = {f"mean_{e}": float(getattr(r, f"mean_{e}")) for e in EMOTIONS}
            dominant = max(EMOTIONS, key=lambda e: m[f"mean_{e}"])
            values.append(
                dict(
                    camera=r.camera,
                    track_id=r.track_id,
                    first_ts_ms=r.lo,
                    last_ts_ms=r.hi,
                    n_faces=r.n,
                    dominant=dominant,
                    **m,
                )
            )
        op.bulk_insert(tracks, values)


def downgrade() -> None:
    op.drop_table("tracks")
    op.drop_table("cameras")
