"""Alembic migrations of the index: ``upgrade`` brings any archive to the current schema
(``storage/schema.py``).

Run by ``Index.create()`` at every start, on the open connection and in one transaction (DDL is
transactional on PostgreSQL and SQLite). Archives made before migrations existed (the tables of revision
0001 without Alembic's version table) are recognised and stamped 0001 first. On PostgreSQL a transaction
advisory lock lets several server processes start at once on one database: the first migrates, the others
wait and then find nothing to do.

A new revision: ``alembic -x url=sqlite:///path revision -m "..."`` is not wired up; copy the newest file
in ``versions/`` (the ``script.py.mako`` template is the one Alembic ships), give it the next number and
``down_revision``, and change ``storage/schema.py`` to match (tests/test_migrations.py compares them).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

# Alembic says "Context impl SQLiteImpl" and the like at every start: only its warnings reach the log.
logging.getLogger("alembic").setLevel(logging.WARNING)

HERE = Path(__file__).resolve().parent
BASELINE = "0001"  # the schema before migrations existed
_LOCK_KEY = 0x64636D77  # "dcmw": PostgreSQL advisory lock held while migrating


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Bring the index on ``connection`` (inside a transaction) to ``revision``."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    tables = set(inspect(connection).get_table_names())
    cfg = config(connection)
    if "studies" in tables and "alembic_version" not in tables:
        command.stamp(cfg, BASELINE)
    command.upgrade(cfg, revision)


def head() -> str | None:
    """The revision this code's schema is at."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config()).get_current_head()


def current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def run(connection: Connection) -> None:
    """``upgrade`` in one transaction of its own on a fresh connection (not yet in a transaction).

    On SQLite the transaction is an explicit BEGIN IMMEDIATE: Python's sqlite3 module would otherwise run
    the DDL outside any transaction, and a crash halfway would leave a half-migrated index."""
    if connection.dialect.name == "sqlite":
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            upgrade(connection)
        except BaseException:
            connection.exec_driver_sql("ROLLBACK")
            raise
        connection.exec_driver_sql("COMMIT")
        return
    with connection.begin():
        upgrade(connection)
