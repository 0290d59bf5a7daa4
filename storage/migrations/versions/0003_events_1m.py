"""per-minute rollup of events (counts per raw and smoothed label, probability sums), backfilled

Revision ID: 0003_events_1m
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_events_1m"
down_revision = "0002_cameras_tracks"
branch_labels = None
depends_on = None

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def upgrade() -> None:
    op.create_table(
        "events_1m",
        sa.Column("camera", sa.String(64), primary_key=True),
        sa.Column("minute_ms", sa.BigInteger, primary_key=True),
        sa.Column("faces", sa.BigInteger, nullable=False),
        *[sa.Column(f"n_{e}", sa.BigInteger, nullable=False) for e in EMOTIONS],
        *[sa.Column(f"s_{e}", sa.BigInteger, nullable=False) for e in EMOTIONS],
        *[sa.Column(f"sum_{e}", sa.Float, nullable=False) for e in EMOTIONS],
    )
    n = ", ".join(f"sum(CASE WHEN label = '{e}' THEN 1 ELSE 0 END)" for e in EMOTIONS)
    s = ", ".join(f"sum(CASE WHEN coalesce(label_smoothed, label) = '{e}' THEN 1 ELSE 0 END)" for e in EMOTIONS)
    p = ", ".join(f"sum(p_{e})" for e in EMOTIONS)
    cols = ", ".join(
        [
            "camera",
            "minute_ms",
            "faces",
            *[f"n_{e}" for e in EMOTIONS],
            *[f"s_{e}" for e in EMOTIONS],
            *[f"sum_{e}" for e in EMOTIONS],
        ]
    )
    op.execute(
        f"INSERT INTO events_1m ({cols}) SELECT camera, ts_ms - ts_ms % 60000, count(*), {n}, {s}, {p} "
        "FROM events GROUP BY camera, ts_ms - ts_ms % 60000"
    )


def downgrade() -> None:
    op.drop_table("events_1m")
