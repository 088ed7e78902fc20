"""Leases on master jobs (issues 11 and 15): the replica working on a job, and until when. A replica that
died loses its jobs to the others once their leases run out.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("master_jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("lease_until", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("master_jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
