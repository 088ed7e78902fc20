"""Baseline: the index as it was before migrations (studies, series, instances, master_jobs).

Archives made before Alembic was used have exactly these tables; they are stamped with this revision,
never run through it.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("patient_name", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("patient_birth_date", sa.String(16), nullable=False),
        sa.Column("patient_sex", sa.String(16), nullable=False),
        sa.Column("study_date", sa.String(16), nullable=False),
        sa.Column("study_time", sa.String(32), nullable=False),
        sa.Column("accession_number", sa.Text, nullable=False),
        sa.Column("study_id", sa.Text, nullable=False),
        sa.Column("study_description", sa.Text, nullable=False),
        sa.Column("referring_physician_name", sa.Text, nullable=False),
        sa.Column("modalities", sa.Text, nullable=False),
        sa.Column("sop_classes", sa.Text, nullable=False),
        sa.Column("num_series", sa.Integer, nullable=False),
        sa.Column("num_instances", sa.Integer, nullable=False),
        sa.Column("attrs", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_studies_patient_id", "studies", ["patient_id"])
    op.create_index("ix_studies_patient_name", "studies", ["patient_name"])
    op.create_index("ix_studies_study_date", "studies", ["study_date"])
    op.create_index("ix_studies_accession", "studies", ["accession_number"])
    op.create_table(
        "series",
        sa.Column("series_uid", sa.String(64), primary_key=True),
        sa.Column("study_uid", sa.String(64), sa.ForeignKey("studies.study_uid"), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("series_number", sa.Integer, nullable=True),
        sa.Column("series_description", sa.Text, nullable=False),
        sa.Column("series_date", sa.String(16), nullable=False),
        sa.Column("series_time", sa.String(32), nullable=False),
        sa.Column("pps_start_date", sa.String(16), nullable=False),
        sa.Column("pps_start_time", sa.String(32), nullable=False),
        sa.Column("num_instances", sa.Integer, nullable=False),
        sa.Column("attrs", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_series_study", "series", ["study_uid"])
    op.create_index("ix_series_modality", "series", ["modality"])
    op.create_table(
        "instances",
        sa.Column("sop_uid", sa.String(64), primary_key=True),
        sa.Column("series_uid", sa.String(64), sa.ForeignKey("series.series_uid"), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer, nullable=True),
        sa.Column("number_of_frames", sa.Integer, nullable=False),
        sa.Column("bits_allocated", sa.Integer, nullable=True),
        sa.Column("pixel_representation", sa.Integer, nullable=True),
        sa.Column("transfer_syntax", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("frames", sa.LargeBinary, nullable=False),
        sa.Column("attrs", sa.LargeBinary, nullable=False),
        sa.Column("metadata", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("fidelity", sa.LargeBinary, nullable=True),
        sa.Column("pixel_sha256", sa.String(64), nullable=True),
    )
    op.create_index("ix_instances_series", "instances", ["series_uid", "instance_number"])
    op.create_index("ix_instances_study", "instances", ["study_uid"])
    op.create_table(
        "master_jobs",
        sa.Column("sop_uid", sa.String(64), primary_key=True),
        sa.Column("blob_key", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_master_jobs_state", "master_jobs", ["state"])


def downgrade() -> None:
    for table in ("master_jobs", "instances", "series", "studies"):
        op.drop_table(table)
