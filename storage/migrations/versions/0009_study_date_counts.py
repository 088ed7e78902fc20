"""How many studies each month and each StudyDate hold, kept by triggers: a deep `offset` into the study
list skips whole months, then whole days.

The study list is ordered newest first, and QIDO-RS pages it by `offset`. A B-tree has no rank, so
skipping n studies walked n index entries: at 100,000 studies an offset near the end cost 2.4x its time
at 1,000 studies on PostgreSQL, and about a second at 1,000,000. With counts per month (its first six
characters, YYYYMM) and per day, the studies before the page are skipped by summing a few hundred month
rows and at most a month's day rows, whatever the archive's size, and the walk starts at the page's day.
(Summing one row per day of 30 years, 11,000 rows, cost about as much as the walk it saved.)

A month is a prefix of the StudyDate, so the months' order agrees with the studies' only where values
compare byte by byte: on PostgreSQL `study_date` gets the "C" collation (SQLite compares bytes already).
That is also the order a locale would give for dates (digits), and sorting by it is faster.

Triggers keep the counts equal to ``studies`` in the transaction that changes it, on every path
(STOW-RS, deletion, lifecycle rules, any replica, a future one), so no code has to remember them. On
PostgreSQL they are deferred to the commit: transactions creating studies of the same day take its rows'
locks in turn while committing, and only when they create or delete a study (instances of an existing
study do not touch them). Months and days left without studies keep zero rows, which sum to nothing;
deleting them would race with a concurrent insert for no gain.

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

FILL = [
    (
        "INSERT INTO study_month_counts (month, studies) "
        "SELECT substr(study_date, 1, 6), count(*) FROM studies GROUP BY substr(study_date, 1, 6)"
    ),
    (
        "INSERT INTO study_day_counts (month, study_date, studies) "
        "SELECT substr(study_date, 1, 6), study_date, count(*) FROM studies GROUP BY study_date"
    ),
]


def _change(row: str, step: str) -> str:
    """Add `step` (+1 or -1) to the counts of `row`'s (new or old) month and day."""
    month = f"substr({row}.study_date, 1, 6)"
    # The counts named with their table: in PostgreSQL's trigger function a bare `studies` is ambiguous.
    return f"""
        INSERT INTO study_month_counts (month, studies) VALUES ({month}, {step})
            ON CONFLICT (month) DO UPDATE SET studies = study_month_counts.studies + ({step});
        INSERT INTO study_day_counts (month, study_date, studies) VALUES ({month}, {row}.study_date, {step})
            ON CONFLICT (month, study_date) DO UPDATE SET studies = study_day_counts.studies + ({step});"""


SQLITE = [
    f"CREATE TRIGGER study_counts_insert AFTER INSERT ON studies BEGIN {_change('new', '1')} END",
    f"CREATE TRIGGER study_counts_delete AFTER DELETE ON studies BEGIN {_change('old', '-1')} END",
    f"""CREATE TRIGGER study_counts_update AFTER UPDATE OF study_date ON studies
    WHEN old.study_date IS NOT new.study_date BEGIN
        {_change("old", "-1")} {_change("new", "1")}
    END""",
]

POSTGRESQL = [
    f"""CREATE FUNCTION study_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN {_change("OLD", "-1")}
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN {_change("NEW", "1")}
        END IF;
        RETURN NULL;
    END $$""",
    # Deferred to the commit, so that the rows are locked for the commit only, not for the rest of the
    # storing transaction.
    """CREATE CONSTRAINT TRIGGER study_counts_insert_delete AFTER INSERT OR DELETE ON studies
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION study_counts_keep()""",
    """CREATE CONSTRAINT TRIGGER study_counts_update AFTER UPDATE OF study_date ON studies
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        WHEN (OLD.study_date IS DISTINCT FROM NEW.study_date) EXECUTE FUNCTION study_counts_keep()""",
]


def upgrade() -> None:
    conn = op.get_bind()
    sqlite = conn.dialect.name == "sqlite"
    text = sa.String(16) if sqlite else sa.String(16, collation="C")
    if not sqlite:
        op.alter_column("studies", "study_date", type_=text, existing_nullable=False)
    op.create_table(
        "study_month_counts",
        sa.Column("month", text, primary_key=True),
        sa.Column("studies", sa.Integer, nullable=False),
    )
    op.create_table(
        "study_day_counts",
        sa.Column("month", text, primary_key=True),
        sa.Column("study_date", text, primary_key=True),
        sa.Column("studies", sa.Integer, nullable=False),
    )
    for statement in FILL + (SQLITE if sqlite else POSTGRESQL):
        conn.execute(sa.text(statement))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        for name in ("insert", "delete", "update"):
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS study_counts_{name}"))
    else:
        conn.execute(sa.text("DROP FUNCTION IF EXISTS study_counts_keep() CASCADE"))
        op.alter_column("studies", "study_date", type_=sa.String(16), existing_nullable=False)
    op.drop_table("study_day_counts")
    op.drop_table("study_month_counts")
