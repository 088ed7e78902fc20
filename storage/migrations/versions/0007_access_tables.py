"""API keys and per-study access labels (issue 12) become part of the versioned schema.

They were created with ``create_all`` when an archive opened, outside the migrations: two replicas
starting together could race, and nothing would carry a later change of them. Archives that already have
them (made by that code) keep them as they are; others get them here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "api_keys" not in have:
        op.create_table(
            "api_keys",
            sa.Column("name", sa.String(128), primary_key=True),
            sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
            sa.Column("scopes", sa.Text(), nullable=False),
            sa.Column("labels", sa.Text(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("revoked_at", sa.Float(), nullable=True),
        )
    if "study_labels" not in have:
        op.create_table(
            "study_labels",
            sa.Column("study_uid", sa.String(64), nullable=False),
            sa.Column("label", sa.String(64), nullable=False),
            sa.PrimaryKeyConstraint("study_uid", "label"),
        )


def downgrade() -> None:
    op.drop_table("study_labels")
    op.drop_table("api_keys")
