"""Starting the service and managing its accounts from the command line
(``popkin serve``, ``popkin users``)."""

from __future__ import annotations

import ipaddress
import secrets

from sqlalchemy import select

from . import ServiceError
from .database import connect, migrate, sessions, transaction
from .security import (AccountError, add_user, check_name, check_password, check_role,
                       new_api_token, revoke_api_tokens, set_password)
from .tables import User

MAX_WORKERS = 32


def _database(db_url: str):
    engine = connect(db_url)
    migrate(engine)
    return engine, sessions(engine)


def ensure_admin(db_url: str, name: str, password: str | None) -> str | None:
    """Create the admin account ``name`` unless it exists; returns the password made for it
    when none was given (to be shown once), else ``None``."""
    engine, factory = _database(db_url)
    made = None
    try:
        with transaction(factory) as db:
            existing = db.scalar(select(User).where(User.name == check_name(name)))
            if existing is not None:
                if existing.role != "admin":
                    raise AccountError(f"user {name!r} exists and is a {existing.role}, not an "
                                       "admin")
                return None
            if password is None:
                password = made = secrets.token_urlsafe(12)
            add_user(db, name, "admin", password)
    finally:
        engine.dispose()
    return made


def add_account(db_url: str, name: str, role: str, password: str) -> None:
    # refused before the database is created or touched
    check_name(name), check_role(role), check_password(password)
    engine, factory = _database(db_url)
    try:
        with transaction(factory) as db:
            add_user(db, name, role, password)
    finally:
        engine.dispose()


def make_token(db_url: str, name: str, label: str = "") -> str:
    engine, factory = _database(db_url)
    try:
        with transaction(factory) as db:
            user = db.scalar(select(User).where(User.name == check_name(name)))
            if user is None or not user.active:
                raise AccountError(f"no active user {name!r}")
            return new_api_token(db, user, label)
    finally:
        engine.dispose()


def reset_password(db_url: str, name: str, password: str) -> None:
    engine, factory = _database(db_url)
    try:
        with transaction(factory) as db:
            set_password(db, _account(db, name), password)
    finally:
        engine.dispose()


def revoke_tokens(db_url: str, name: str) -> int:
    engine, factory = _database(db_url)
    try:
        with transaction(factory) as db:
            return revoke_api_tokens(db, _account(db, name))
    finally:
        engine.dispose()


def _account(db, name: str) -> User:
    user = db.scalar(select(User).where(User.name == check_name(name)))
    if user is None:
        raise AccountError(f"no user {name!r}")
    return user


def list_accounts(db_url: str) -> list[tuple[str, str, bool]]:
    engine, factory = _database(db_url)
    try:
        with transaction(factory) as db:
            return [(u.name, u.role, u.active)
                    for u in db.scalars(select(User).order_by(User.name)).all()]
    finally:
        engine.dispose()


def check_host(host: str) -> bool:
    """Whether ``host`` is a loopback address (the default, and the safe choice: the service
    speaks plain HTTP, so anything wider belongs behind a TLS proxy)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        if host == "localhost":
            return True
        raise ServiceError(f"--host {host[:60]!r} is not an IP address") from None


def serve(db_url: str, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 2,
          fits: str | None = None) -> None:
    """Run the service until interrupted."""
    import uvicorn

    from .app import create_app

    if not 1 <= workers <= MAX_WORKERS:
        raise ServiceError(f"--workers must be between 1 and {MAX_WORKERS}")
    app = create_app(db_url, workers=workers, fits=fits)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False)
