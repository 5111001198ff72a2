"""Alembic environment: packcache runs migrations itself when it opens a cache.

The caller passes an open SQLAlchemy connection in `config.attributes["connection"]`, so the
upgrade runs on the same connection (and the same file lock) as the rest of the open.
"""

from __future__ import annotations

from alembic import context

from packcache.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` on the command line: open the URL from the config.
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
