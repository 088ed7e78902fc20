"""How many studies each StudyDate holds, kept by triggers: a deep `offset` skips whole days.

The study list is ordered newest first, and QIDO-RS pages it by `offset`. A B-tree has no rank, so
skipping n studies walked n index entries: at 100,000 studies an offset near the end cost 2.4x its time
at 1,000 studies on PostgreSQL, and about a second at 1,000,000. With a count per day, the days before
the page are skipped by summing a few thousand small rows (one per day that has studies, whatever the
archive's size), and the walk starts at the page's day.

Triggers keep the counts equal to ``studies`` in the transaction that changes it, on every path
(STOW-RS, deletion, lifecycle rules, any replica, a future one), so no code has to remember them. The
counts of one day are one row: on PostgreSQL, transactions creating studies of the same day take its
row lock in turn, at their commit (the triggers are deferred to it), and only when they create or delete
a study (instances of an existing study do not touch it). Days left without studies keep a zero row,
which sums to nothing; deleting it would race with a concurrent insert for no gain.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FILL = (
    "INSERT INTO study_day_counts (study_date, studies) "
    "SELECT study_date, count(*) FROM studies GROUP BY study_date"
)

SQLITE = [
    """CREATE TRIGGER study_day_counts_insert AFTER INSERT ON studies BEGIN
        INSERT INTO study_day_counts (study_date, studies) VALUES (new.study_date, 1)
            ON CONFLICT (study_date) DO UPDATE SET studies = studies + 1;
    END""",
    """CREATE TRIGGER study_day_counts_delete AFTER DELETE ON studies BEGIN
        UPDATE study_day_counts SET studies = studies - 1 WHERE study_date = old.study_date;
    END""",
    """CREATE TRIGGER study_day_counts_update AFTER UPDATE OF study_date ON studies
    WHEN old.study_date IS NOT new.study_date BEGIN
        UPDATE study_day_counts SET studies = studies - 1 WHERE study_date = old.study_date;
        INSERT INTO study_day_counts (study_date, studies) VALUES (new.study_date, 1)
            ON CONFLICT (study_date) DO UPDATE SET studies = studies + 1;
    END""",
]

POSTGRESQL = [
    """CREATE FUNCTION study_day_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            UPDATE study_day_counts SET studies = studies - 1 WHERE study_date = OLD.study_date;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO study_day_counts (study_date, studies) VALUES (NEW.study_date, 1)
                ON CONFLICT (study_date) DO UPDATE SET studies = study_day_counts.studies + 1;
        END IF;
        RETURN NULL;
    END $$""",
    # Deferred to the commit, so that a day's row is locked for the commit only, not for the rest of
    # the storing transaction.
    """CREATE CONSTRAINT TRIGGER study_day_counts_insert_delete AFTER INSERT OR DELETE ON studies
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION study_day_counts_keep()""",
    """CREATE CONSTRAINT TRIGGER study_day_counts_update AFTER UPDATE OF study_date ON studies
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        WHEN (OLD.study_date IS DISTINCT FROM NEW.study_date) EXECUTE FUNCTION study_day_counts_keep()""",
]


def upgrade() -> None:
    op.create_table(
        "study_day_counts",
        sa.Column("study_date", sa.String(16), primary_key=True),
        sa.Column("studies", sa.Integer, nullable=False),
    )
    conn = op.get_bind()
    conn.execute(sa.text(FILL))
    for statement in SQLITE if conn.dialect.name == "sqlite" else POSTGRESQL:
        conn.execute(sa.text(statement))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        for name in ("insert", "delete", "update"):
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS study_day_counts_{name}"))
    else:
        conn.execute(sa.text("DROP FUNCTION IF EXISTS study_day_counts_keep() CASCADE"))
    op.drop_table("study_day_counts")
