"""The index at scale (issue 14): indexes in each common query's order, case-insensitive PatientName
through a lower-cased column, byte-wise collation for prefix matching on PostgreSQL.

- studies.patient_name_ci: PatientName lower-cased (filled here for the studies already stored);
- studies: (study_date DESC, study_time DESC, study_uid) for the study list and date ranges, instead of
  study_date alone; (patient_name_ci, study_uid) instead of patient_name, and (patient_id, study_uid):
  an infix wildcard scans these small entries rather than the rows;
- PostgreSQL: patient_id, accession_number and patient_name_ci compare byte-wise (COLLATE "C"), so a
  B-tree serves prefix wildcards whatever the database's locale;
- series: (study_uid, series_number, series_uid) and (modality, study_uid) instead of single columns;
- instances: (series_uid, instance_number, sop_uid) and (study_uid, series_uid, instance_number, sop_uid);
- master_jobs: (state, updated_at), the queue's order.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BATCH = 5000

# (table, index, columns) before and after.
Columns = list[str | sa.TextClause]
OLD: list[tuple[str, str, Columns]] = [
    ("studies", "ix_studies_patient_id", ["patient_id"]),
    ("studies", "ix_studies_patient_name", ["patient_name"]),
    ("studies", "ix_studies_study_date", ["study_date"]),
    ("series", "ix_series_study", ["study_uid"]),
    ("series", "ix_series_modality", ["modality"]),
    ("instances", "ix_instances_series", ["series_uid", "instance_number"]),
    ("instances", "ix_instances_study", ["study_uid"]),
    ("master_jobs", "ix_master_jobs_state", ["state"]),
]
NEW: list[tuple[str, str, Columns]] = [
    ("studies", "ix_studies_patient_id", ["patient_id", "study_uid"]),
    ("studies", "ix_studies_patient_name_ci", ["patient_name_ci", "study_uid"]),
    (
        "studies",
        "ix_studies_date_order",
        [sa.text("study_date DESC"), sa.text("study_time DESC"), "study_uid"],
    ),
    ("series", "ix_series_study_order", ["study_uid", "series_number", "series_uid"]),
    ("series", "ix_series_modality_study", ["modality", "study_uid"]),
    ("instances", "ix_instances_series_order", ["series_uid", "instance_number", "sop_uid"]),
    ("instances", "ix_instances_study_order", ["study_uid", "series_uid", "instance_number", "sop_uid"]),
    ("master_jobs", "ix_master_jobs_state", ["state", "updated_at"]),
]


def _fill_patient_name_ci(conn: sa.Connection) -> None:
    """Python's str.lower, as ingest and queries use (SQL's lower() differs between databases)."""
    studies = sa.table(
        "studies", sa.column("study_uid"), sa.column("patient_name"), sa.column("patient_name_ci")
    )
    update = (
        sa.update(studies)
        .where(studies.c.study_uid == sa.bindparam("uid"))
        .values(patient_name_ci=sa.bindparam("ci"))
    )
    last = ""
    while True:
        rows = conn.execute(
            sa.select(studies.c.study_uid, studies.c.patient_name)
            .where(studies.c.study_uid > last)
            .order_by(studies.c.study_uid)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        changed = [{"uid": uid, "ci": name.lower()} for uid, name in rows if name]
        if changed:
            conn.execute(update, changed)
        last = rows[-1][0]


def upgrade() -> None:
    conn = op.get_bind()
    postgres = conn.dialect.name == "postgresql"
    ci_type = sa.Text(collation="C") if postgres else sa.Text()
    op.add_column("studies", sa.Column("patient_name_ci", ci_type, nullable=False, server_default=""))
    _fill_patient_name_ci(conn)
    for table, name, _columns in OLD:
        op.drop_index(name, table_name=table)
    if postgres:
        for column in ("patient_id", "accession_number"):
            op.alter_column("studies", column, type_=sa.Text(collation="C"), existing_nullable=False)
    for table, name, columns in NEW:
        op.create_index(name, table, columns)
    if postgres:
        op.execute("ANALYZE")


def downgrade() -> None:
    conn = op.get_bind()
    for table, name, _columns in NEW:
        op.drop_index(name, table_name=table)
    if conn.dialect.name == "postgresql":
        for column in ("patient_id", "accession_number"):
            op.alter_column("studies", column, type_=sa.Text(), existing_nullable=False)
    for table, name, columns in OLD:
        op.create_index(name, table, columns)
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("patient_name_ci")
