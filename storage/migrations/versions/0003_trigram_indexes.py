"""PostgreSQL only: trigram indexes (pg_trgm) for infix wildcards on PatientName and PatientID.

Measured at 10,000 studies, ``PatientName=*000012*`` was a sequential scan of every study (8 ms, growing
with the archive); a GIN trigram index answers ``LIKE '%000012%'`` from the index. The extension ships
with PostgreSQL (contrib) and is "trusted" (PostgreSQL 13+): the database's owner may create it. Where
it is missing or not allowed, the migration says so in the log and goes on: infix wildcards still work,
by a scan. SQLite has no trigram index (see the README).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# (index, column): not in storage/schema.py, which holds what every database has.
TRIGRAM_INDEXES = (
    ("ix_studies_patient_name_trgm", "patient_name_ci"),
    ("ix_studies_patient_id_trgm", "patient_id"),
)


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    try:
        with conn.begin_nested():
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        logging.getLogger("storage.migrations").warning(
            "pg_trgm not available (%s): infix wildcards on PatientName and PatientID will scan the studies",
            str(exc).splitlines()[0],
        )
        return
    for name, column in TRIGRAM_INDEXES:
        op.create_index(
            name, "studies", [column], postgresql_using="gin", postgresql_ops={column: "gin_trgm_ops"}
        )


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for name, _column in TRIGRAM_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
