"""Alembic's environment: popkin runs migrations itself, on a connection it opens
(:func:`popkin.service.database.migrate`), so there is no ``alembic.ini`` and no offline mode."""

from alembic import context

from popkin.service.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
