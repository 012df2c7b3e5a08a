"""Alembic's environment: migrations run on the connection `proxy.stores.migrations` hands in
(`cutover schema init`, or a store's `init_schema`), never on one of their own."""

from __future__ import annotations

from alembic import context

from proxy.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `cutover schema init` (it opens both stores)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
