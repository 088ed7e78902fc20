"""Storage economics (issue 16): what each instance cost as received and costs uncompressed, which store
tier holds its blob, when each study was last read, what a lossy derivation replaced, how it measured, and
blobs waiting to be deleted once the rows that used them are gone.

- instances.received_size: bytes of the file as received. Filled here with ``size``, which for an
  instance already converted to a master is the master's size: the received size of those is not known.
- instances.pixel_bytes: Rows x Columns x Samples per Pixel x Bits Allocated / 8 x frames (the
  uncompressed Pixel Data, as Lossy Image Compression Ratio counts it), filled here from ``attrs``.
- instances.tier: "hot" (the blob store) or "cold" (DICOMWEB_COLD_BLOB_URL).
- studies.accessed_at: when a WADO-RS retrieval last read the study (epoch seconds, 0 = never).
- instance_successors: an original SOP Instance UID and the derived instance that took its place.
- lossy_qa: per frame of a derived instance, its fidelity measured against the original.
- blob_trash: blobs to delete after the transaction that stopped using them committed (a crash between
  the two leaves a row here, not an orphan).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BATCH = 5000


def pixel_bytes(attrs: dict, frames: int) -> int:
    """Uncompressed Pixel Data size from an instance's DICOM JSON attributes (0 when it has no pixels)."""

    def first(tag: str) -> int:
        try:
            return int(float(attrs[tag]["Value"][0]))
        except (KeyError, IndexError, TypeError, ValueError):
            return 0

    rows, columns, bits = first("00280010"), first("00280011"), first("00280100")
    samples = first("00280002") or 1
    return rows * columns * samples * bits * max(frames, 1) // 8


def _fill_pixel_bytes(conn: sa.Connection) -> None:
    instances = sa.table(
        "instances",
        sa.column("sop_uid"),
        sa.column("attrs"),
        sa.column("number_of_frames"),
        sa.column("pixel_bytes"),
    )
    last = ""
    while True:
        rows = conn.execute(
            sa.select(instances.c.sop_uid, instances.c.attrs, instances.c.number_of_frames)
            .where(instances.c.sop_uid > last)
            .order_by(instances.c.sop_uid)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        conn.execute(
            sa.update(instances).where(instances.c.sop_uid == sa.bindparam("uid")),
            [
                {"uid": r.sop_uid, "pixel_bytes": pixel_bytes(orjson.loads(r.attrs), r.number_of_frames or 0)}
                for r in rows
            ],
        )
        last = rows[-1].sop_uid


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("received_size", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("pixel_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("tier", sa.String(16), nullable=False, server_default="hot"))
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("accessed_at", sa.Float(), nullable=False, server_default="0"))
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE instances SET received_size = size"))
    _fill_pixel_bytes(conn)

    op.create_table(
        "instance_successors",
        sa.Column("sop_uid", sa.String(64), primary_key=True),
        sa.Column("successor_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_instance_successors_successor", "instance_successors", ["successor_uid"])
    op.create_table(
        "lossy_qa",
        sa.Column("sop_uid", sa.String(64), primary_key=True),
        sa.Column("frame", sa.Integer(), primary_key=True),
        sa.Column("source_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("layers", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("ratio", sa.Float(), nullable=False),
        sa.Column("psnr", sa.Float(), nullable=True),
        sa.Column("max_error", sa.Integer(), nullable=False),
        sa.Column("ssim", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_lossy_qa_study", "lossy_qa", ["study_uid", "sop_uid"])
    op.create_table(
        "blob_trash",
        sa.Column("blob_key", sa.Text(), primary_key=True),
        sa.Column("tier", sa.String(16), primary_key=True),
        sa.Column("queued_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("blob_trash")
    op.drop_index("ix_lossy_qa_study", "lossy_qa")
    op.drop_table("lossy_qa")
    op.drop_index("ix_instance_successors_successor", "instance_successors")
    op.drop_table("instance_successors")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("accessed_at")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("tier")
        batch.drop_column("pixel_bytes")
        batch.drop_column("received_size")
