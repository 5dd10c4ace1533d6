"""The service's database: which one, how to connect, and its schema brought up to date.

SQLite (a file, the default) or PostgreSQL (``postgresql://user@host/db``, through psycopg 3).
Every start runs the Alembic migrations that the database lacks, inside one transaction on
PostgreSQL, so an upgraded popkin finds its data where it left it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from importlib import resources

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from . import ServiceError

DEFAULT_URL = "sqlite:///popkin-service.db"
_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg",
            "postgres": "postgresql+psycopg", "postgresql+psycopg": "postgresql+psycopg"}


class DatabaseError(ServiceError):
    """A database URL popkin cannot use, or a database it cannot open or upgrade."""


def normalise_url(url: str) -> str:
    """The SQLAlchemy URL for a user's ``--db`` value: ``sqlite:///FILE`` or
    ``postgresql://...`` (psycopg 3 is the driver).

    >>> normalise_url("postgresql://popkin@localhost/popkin")
    'postgresql+psycopg://popkin@localhost/popkin'
    >>> normalise_url("mysql://x")
    Traceback (most recent call last):
    ...
    popkin.service.database.DatabaseError: --db: 'mysql' databases are not supported; use sqlite:///FILE or postgresql://USER@HOST/DATABASE
    """
    if not isinstance(url, str) or not url or len(url) > 2000 or re.search(r"[\x00-\x1f]", url):
        raise DatabaseError("--db: give a database URL such as sqlite:///popkin-service.db")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"--db: {url[:80]!r} is not a database URL; use sqlite:///FILE or "
                            "postgresql://USER@HOST/DATABASE") from None
    scheme = _SCHEMES.get(parsed.drivername)
    if scheme is None:
        raise DatabaseError(f"--db: {parsed.get_backend_name()!r} databases are not supported; "
                            "use sqlite:///FILE or postgresql://USER@HOST/DATABASE")
    if scheme == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise DatabaseError("--db: an in-memory SQLite database would lose every record when "
                            "the service stops; name a file: sqlite:///popkin-service.db")
    return parsed.set(drivername=scheme).render_as_string(hide_password=False)


def connect(url: str) -> Engine:
    """An engine for ``url`` (see :func:`normalise_url`). SQLite runs in WAL mode with full
    synchronisation and foreign keys on: a transaction that returned is on disk, and readers
    do not wait for the writer."""
    engine = create_engine(normalise_url(url), pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
    return engine


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Apply the migrations the database lacks; returns the revision before and after."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    with resources.as_file(resources.files("popkin.service") / "migrations") as folder:
        config = Config()
        config.set_main_option("script_location", str(folder))
        with engine.begin() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            after = MigrationContext.configure(connection).get_current_revision()
    return before, after


def revision(engine: Engine) -> str | None:
    """The schema revision the database is at (``None`` for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return MigrationContext.configure(connection).get_current_revision()


def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]):
    """A session whose work is committed together at the end of the block, or not at all."""
    with factory() as session, session.begin():
        yield session
