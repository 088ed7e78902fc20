"""SQL schema of the index (SQLAlchemy Core, portable between SQLite and PostgreSQL).

Columns hold what QIDO-RS matches on and sorts by; each level also keeps its attributes as DICOM JSON
(``attrs``) for return values and matching on attributes without a column. Each instance keeps its full
metadata JSON and where its frames lie in its blob, so WADO-RS never re-parses a file.

This is the schema at the newest migration (``storage/migrations/versions``): an archive is created and
carried forward by those migrations, and ``tests/test_migrations.py`` checks that they end here. A change
here needs a new migration.

Indexes follow the queries (issue 14): every common QIDO query walks an index in its result order or
seeks a few rows. Text columns matched with prefix wildcards use the "C" collation on PostgreSQL, so a
B-tree answers ``LIKE 'abc%'`` and the byte-wise range the query adds (SQLite compares bytes already).
"""

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Byte-wise comparison on PostgreSQL (prefix LIKE and ranges through a B-tree whatever the database's
# locale); SQLite's default BINARY collation is the same thing.
CText = Text().with_variant(Text(collation="C"), "postgresql")
CString16 = String(16).with_variant(String(16, collation="C"), "postgresql")

studies = Table(
    "studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("patient_name", Text, nullable=False, default=""),
    # PatientName lower-cased (Python's str.lower), for case-insensitive matching through an index.
    Column("patient_name_ci", CText, nullable=False, default="", server_default=""),
    Column("patient_id", CText, nullable=False, default=""),
    Column("patient_birth_date", String(16), nullable=False, default=""),
    Column("patient_sex", String(16), nullable=False, default=""),
    # Byte-wise, so that its first six characters (the month) sort as it does (migration 0009).
    Column("study_date", CString16, nullable=False, default=""),
    Column("study_time", String(32), nullable=False, default=""),
    Column("accession_number", CText, nullable=False, default=""),
    Column("study_id", Text, nullable=False, default=""),
    Column("study_description", Text, nullable=False, default=""),
    Column("referring_physician_name", Text, nullable=False, default=""),
    # Backslash-joined, so ModalitiesInStudy is both returned and matched without a join.
    Column("modalities", Text, nullable=False, default=""),
    Column("sop_classes", Text, nullable=False, default=""),
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("attrs", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
    # When a WADO-RS retrieval last read the study (epoch seconds, 0 = never): lifecycle rules leave
    # studies read recently alone.
    Column("accessed_at", Float, nullable=False, default=0.0, server_default="0"),
)
# With the UID, so that an infix wildcard (no prefix to seek) scans these small index entries instead of
# the studies' rows (SQLite; PostgreSQL has trigram indexes for it, migration 0003).
Index("ix_studies_patient_id", studies.c.patient_id, studies.c.study_uid)
Index("ix_studies_patient_name_ci", studies.c.patient_name_ci, studies.c.study_uid)
# The study list's order (newest first, the UID breaking ties), and StudyDate ranges.
Index("ix_studies_date_order", studies.c.study_date.desc(), studies.c.study_time.desc(), studies.c.study_uid)
Index("ix_studies_accession", studies.c.accession_number)

# How many studies each month (YYYYMM, the StudyDate's first six characters) and each StudyDate hold
# (migration 0009's triggers keep them equal to `studies`): a deep offset into the newest-first study list
# skips whole months, then days, instead of walking every study before it.
study_month_counts = Table(
    "study_month_counts",
    metadata,
    Column("month", CString16, primary_key=True),
    Column("studies", Integer, nullable=False),
)
study_day_counts = Table(
    "study_day_counts",
    metadata,
    Column("month", CString16, primary_key=True),
    Column("study_date", CString16, primary_key=True),
    Column("studies", Integer, nullable=False),
)

series = Table(
    "series",
    metadata,
    Column("series_uid", String(64), primary_key=True),
    Column("study_uid", String(64), ForeignKey("studies.study_uid"), nullable=False),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_number", Integer, nullable=True),
    Column("series_description", Text, nullable=False, default=""),
    Column("series_date", String(16), nullable=False, default=""),
    Column("series_time", String(32), nullable=False, default=""),
    Column("pps_start_date", String(16), nullable=False, default=""),
    Column("pps_start_time", String(32), nullable=False, default=""),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("attrs", LargeBinary, nullable=False),
)
# Series of a study in result order; ModalitiesInStudy is matched on the series' Modality.
Index("ix_series_study_order", series.c.study_uid, series.c.series_number, series.c.series_uid)
Index("ix_series_modality_study", series.c.modality, series.c.study_uid)

instances = Table(
    "instances",
    metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("series_uid", String(64), ForeignKey("series.series_uid"), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("number_of_frames", Integer, nullable=False, default=0),
    # How decoded frames are laid out (container size and signedness), for uncompressed frames.
    Column("bits_allocated", Integer, nullable=True),
    Column("pixel_representation", Integer, nullable=True),
    Column("transfer_syntax", String(64), nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    # JSON list, per frame, of [offset, length] pieces inside the blob.
    Column("frames", LargeBinary, nullable=False),
    Column("attrs", LargeBinary, nullable=False),
    Column("metadata", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    # SHA-256 of the blob, checked by `dicomweb verify`.
    Column("sha256", String(64), nullable=False, default=""),
    # Masters only: per-frame fidelity ladder (JSON) and SHA-256 of the decoded pixels.
    Column("fidelity", LargeBinary, nullable=True),
    Column("pixel_sha256", String(64), nullable=True),
    # Storage economics (issue 16): bytes of the file as received (``size`` is what is stored now),
    # the uncompressed Pixel Data size (Rows x Columns x Samples x Bits Allocated / 8 x frames), and the
    # store tier that holds the blob: "hot" (the blob store) or "cold" (DICOMWEB_COLD_BLOB_URL).
    Column("received_size", BigInteger, nullable=False, default=0, server_default="0"),
    Column("pixel_bytes", BigInteger, nullable=False, default=0, server_default="0"),
    Column("tier", String(16), nullable=False, default="hot", server_default="hot"),
)
# Instances of a series (/metadata, frames) and of a study, in result order.
Index("ix_instances_series_order", instances.c.series_uid, instances.c.instance_number, instances.c.sop_uid)
Index(
    "ix_instances_study_order",
    instances.c.study_uid,
    instances.c.series_uid,
    instances.c.instance_number,
    instances.c.sop_uid,
)
# Instances on the cold tier only (migration 0008): whether there are any is asked at every start.
Index(
    "ix_instances_cold",
    instances.c.tier,
    sqlite_where=instances.c.tier == "cold",
    postgresql_where=instances.c.tier == "cold",
)

# Durable queue of received instances waiting to become masters, then of masters waiting for their
# fidelity ladder: a row is written in the same transaction as the instance, so a restart resumes exactly
# where the work stopped.
master_jobs = Table(
    "master_jobs",
    metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("blob_key", Text, nullable=False),  # the received blob to convert
    # pending | kept | ladder (the master is made; its fidelity ladder waits to be measured, and
    # blob_key names the master: storage.ladder)
    Column("state", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=False, default=""),
    Column("updated_at", Float, nullable=False),
    # The replica working on the job, until when: a replica that died (SIGKILL) loses its jobs to the
    # others once their leases run out.
    Column("lease_owner", String(64), nullable=False, default=""),
    Column("lease_until", Float, nullable=False, default=0.0),
)
Index("ix_master_jobs_state", master_jobs.c.state, master_jobs.c.updated_at)

# An original SOP Instance UID and the derived (lossy) instance that took its place: WADO-RS requests for
# the original are redirected to the successor.
instance_successors = Table(
    "instance_successors",
    metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("successor_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("reason", Text, nullable=False, default="", server_default=""),
    Column("created_at", Float, nullable=False),
)
Index("ix_instance_successors_successor", instance_successors.c.successor_uid)

# Per frame of a derived instance, its fidelity measured against the original before that was deleted.
lossy_qa = Table(
    "lossy_qa",
    metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("frame", Integer, primary_key=True),
    Column("source_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("layers", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("ratio", Float, nullable=False),
    Column("psnr", Float, nullable=True),  # None: identical
    Column("max_error", Integer, nullable=False),
    Column("ssim", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_lossy_qa_study", lossy_qa.c.study_uid, lossy_qa.c.sop_uid)

# Blobs to delete once the transaction that stopped using them has committed: written in that
# transaction, so a crash before the deletion leaves a row to finish, not an orphaned blob.
blob_trash = Table(
    "blob_trash",
    metadata,
    Column("blob_key", Text, primary_key=True),
    Column("tier", String(16), primary_key=True),
    Column("queued_at", Float, nullable=False),
)

# API keys (storage/api_keys.py): only the SHA-256 of each key is kept.
api_keys = Table(
    "api_keys",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("key_sha256", String(64), nullable=False, unique=True),
    Column("scopes", Text, nullable=False),  # space-separated abstract scopes
    Column("labels", Text, nullable=False, default=""),  # space-separated access labels; empty: all
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# Per-study access labels (storage/access_labels.py).
study_labels = Table(
    "study_labels",
    metadata,
    Column("study_uid", String(64), nullable=False),
    Column("label", String(64), nullable=False),
    PrimaryKeyConstraint("study_uid", "label"),
)
