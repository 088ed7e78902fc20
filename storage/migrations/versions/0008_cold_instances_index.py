"""A partial index of the instances on the cold tier.

Every start asks whether any instance is cold (an archive holding cold studies must not start without its
cold store). Without an index that question scanned every instance row, metadata and all, whenever the
answer was no; the index holds only cold rows, so it costs nothing for the hot ones.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLD = sa.text("tier = 'cold'")


def upgrade() -> None:
    op.create_index("ix_instances_cold", "instances", ["tier"], sqlite_where=COLD, postgresql_where=COLD)


def downgrade() -> None:
    op.drop_index("ix_instances_cold", "instances")
