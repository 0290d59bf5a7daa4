"""frames and events (the schema of the walking skeleton)

Revision ID: 0001_frames_events
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_frames_events"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "frames",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("camera", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("faces", sa.Integer, nullable=False),
        sa.UniqueConstraint("camera", "seq", name="uq_frames_camera_seq"),
    )
    op.create_index("ix_frames_camera_ts", "frames", ["camera", "ts_ms"])
    op.create_table(
        "events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("camera", sa.String(64), nullable=False),
        sa.Column("frame_seq", sa.BigInteger, nullable=False),
        sa.Column("face_index", sa.Integer, nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        *[sa.Column(c, sa.Float, nullable=False) for c in ("x", "y", "w", "h", "det_score")],
        sa.Column("track_id", sa.BigInteger, nullable=True),
        *[
            sa.Column(f"p_{e}", sa.Float, nullable=False)
            for e in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
        ],
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("label_smoothed", sa.String(16), nullable=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.UniqueConstraint("camera", "frame_seq", "face_index", name="uq_events_camera_seq_face"),
    )
    op.create_index("ix_events_camera_ts", "events", ["camera", "ts_ms"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("frames")
