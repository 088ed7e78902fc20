"""Alembic's environment: migrations run on the connection ``storage.migrations.upgrade`` hands over."""

from alembic import context

from storage import schema

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through storage.migrations.upgrade(connection)")
context.configure(connection=connection, target_metadata=schema.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
