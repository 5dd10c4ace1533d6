"""Accounts, logins and what each role may do.

- Passwords are hashed with Argon2id (argon2-cffi, the reference implementation's binding);
  only the hash is stored, and a hash made with older parameters is replaced at the next login.
- A login creates a server-side session: the browser holds a random token (an HttpOnly,
  SameSite=Lax cookie), the database only its SHA-256. Logging out deletes the session.
- Every form that changes something carries the session's CSRF token (and every JSON request
  made with the session cookie, the ``X-CSRF-Token`` header); the login form, which has no
  session yet, uses a double-submit cookie.
- Scripts use API tokens (``Authorization: Bearer ...``), stored as SHA-256 hashes and shown
  once when made; a bearer request carries no cookie, so it needs no CSRF token.
- Failed logins are counted per account name and per client address; after
  :data:`MAX_FAILURES` in :data:`FAILURE_WINDOW`, logins from either are refused until the
  window passes.

Roles are ordered: a viewer reads; a pharmacist also creates and changes patients and asks for
recommendations; an admin also manages accounts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session as DbSession

from .tables import ROLES, ApiToken, AuditEvent, LoginAttempt, Session, User, utcnow
from . import ServiceError

SESSION_LIFETIME = timedelta(hours=12)
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_hasher = PasswordHasher()


class AccountError(ServiceError):
    """A user name, role or password that cannot be used, with the reason."""


def check_name(name: str) -> str:
    """A user name: 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or
    digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name[:40]) if isinstance(name, str) else type(name).__name__
        raise AccountError(f"user name {shown}: use 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role {str(role)[:40]!r}: choose one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password may have at most {MAX_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def may(role: str, needed: str) -> bool:
    """Whether ``role`` includes what ``needed`` may do (viewer < pharmacist < admin)."""
    return ROLES.index(role) >= ROLES.index(needed)


def add_user(db: DbSession, name: str, role: str, password: str, *, by: int | None = None) -> User:
    """Create an account; refuses a name already taken."""
    name, role = check_name(name), check_role(role)
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise AccountError(f"user {name!r} exists already")
    user = User(name=name, role=role, password_hash=hash_password(password), active=True)
    db.add(user)
    db.flush()
    audit(db, by, "user added", f"{name} ({role})")
    return user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_api_token(db: DbSession, user: User, label: str = "") -> str:
    """A new API token for ``user``; the token itself is returned once and never stored."""
    token = "pk_" + secrets.token_urlsafe(32)
    db.add(ApiToken(user_id=user.id, token_hash=_digest(token), label=label[:64]))
    audit(db, user.id, "API token made", label[:64])
    return token


def revoke_api_tokens(db: DbSession, user: User, by: int | None = None) -> int:
    """Revoke every API token of ``user``; returns how many were live."""
    live = db.scalars(select(ApiToken).where(ApiToken.user_id == user.id,
                                             ApiToken.revoked_at.is_(None))).all()
    for row in live:
        row.revoked_at = utcnow()
    audit(db, by, "API tokens revoked", f"{user.name}: {len(live)}")
    return len(live)


def set_password(db: DbSession, user: User, password: str, *, by: int | None = None,
                 keep_session: str | None = None) -> None:
    """Give ``user`` a new password and end their other sessions (a stolen session does not
    survive a password change)."""
    user.password_hash = hash_password(password)
    query = delete(Session).where(Session.user_id == user.id)
    if keep_session is not None:
        query = query.where(Session.token_hash != _digest(keep_session))
    db.execute(query)
    audit(db, by, "password changed", user.name)


def verify_password(user: User, password: str) -> bool:
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def user_for_token(db: DbSession, token: str) -> User | None:
    if not token or len(token) > 200:
        return None
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(token),
                                           ApiToken.revoked_at.is_(None)))
    return row.user if row is not None and row.user.active else None


# -- logins ---------------------------------------------------------------------------------

class TooManyAttempts(Exception):
    def __init__(self, retry_after: timedelta):
        super().__init__(f"too many failed logins; try again in "
                         f"{max(1, round(retry_after.total_seconds() / 60))} min")
        self.retry_after = retry_after


def _recent_failures(db: DbSession, column, value: str, since: datetime
                     ) -> tuple[int, datetime | None]:
    count, first = db.execute(
        select(func.count(), func.min(LoginAttempt.at))
        .where(column == value, LoginAttempt.at >= since,
               LoginAttempt.succeeded.is_(False))).one()
    if first is not None and first.tzinfo is None:
        first = first.replace(tzinfo=utcnow().tzinfo)
    return count, first


def login(db: DbSession, name: str, password: str, address: str) -> tuple[User, str, str]:
    """Check a name and password; returns the user, the session token for the cookie and the
    session's CSRF token. Raises :class:`TooManyAttempts` when rate-limited and
    :class:`AccountError` (one message for every failure, so it tells nothing about which
    part was wrong) otherwise."""
    now = utcnow()
    name = name[:64] if isinstance(name, str) else ""
    address = address[:64]
    since = now - FAILURE_WINDOW
    for column, value in ((LoginAttempt.name, name), (LoginAttempt.address, address)):
        count, first = _recent_failures(db, column, value, since)
        if count >= MAX_FAILURES:
            raise TooManyAttempts(first + FAILURE_WINDOW - now)
    user = db.scalar(select(User).where(User.name == name))
    ok = False
    if user is not None and user.active and isinstance(password, str) \
            and len(password) <= MAX_PASSWORD_LENGTH:
        try:
            ok = _hasher.verify(user.password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
    else:
        # the same work for an unknown name, so timing does not tell which names exist
        try:
            _hasher.verify(_DUMMY_HASH, "not the password")
        except VerifyMismatchError:
            pass
    db.add(LoginAttempt(name=name, address=address, at=now, succeeded=ok))
    if not ok:
        audit(db, None, "login failed", name)
        raise AccountError("wrong user name or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    db.add(Session(token_hash=_digest(token), user_id=user.id, csrf_token=csrf,
                   created_at=now, expires_at=now + SESSION_LIFETIME))
    db.execute(delete(Session).where(Session.expires_at < now))
    audit(db, user.id, "login", "")
    return user, token, csrf


_DUMMY_HASH = _hasher.hash("popkin: a hash to verify against for unknown names")


def session_for(db: DbSession, token: str | None) -> Session | None:
    if not token or len(token) > 200:
        return None
    row = db.get(Session, _digest(token))
    if row is None or row.expires_at < utcnow() or not row.user.active:
        return None
    return row


def logout(db: DbSession, token: str | None) -> None:
    row = session_for(db, token)
    if row is not None:
        audit(db, row.user_id, "logout", "")
        db.delete(row)


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))


def audit(db: DbSession, user_id: int | None, action: str, detail: str = "",
          patient_id: int | None = None) -> None:
    db.add(AuditEvent(user_id=user_id, action=action, detail=detail[:2000],
                      patient_id=patient_id))
