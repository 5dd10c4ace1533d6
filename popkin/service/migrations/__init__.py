"""Alembic migrations of the service's database (run by :func:`popkin.service.database.migrate`)."""
