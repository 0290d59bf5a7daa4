"""events.quality: the detector's crop quality (size x sharpness, in [0, 1]); NULL for rows written before it

Revision ID: 0004_events_quality
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_events_quality"
down_revision = "0003_events_1m"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("quality", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:  # SQLite before 3.35 cannot drop a column in place
        batch.drop_column("quality")
