"""The service's database tables (SQLAlchemy 2 ORM).

What the service keeps, and the rules that make it an audit trail:

- ``users``, their ``sessions`` and ``api_tokens`` (only hashes of passwords and tokens are
  stored), and ``login_attempts`` for rate limiting;
- ``patients`` and their ``entries``: doses, levels and covariates. An entry is never edited:
  a correction adds a new entry and marks the old one as superseded by it, with the reason, so
  the record as it was on any day can be rebuilt;
- ``jobs``: recommendations asked for and their state (queued, running, done, failed,
  interrupted);
- ``recommendations``: each one written once, in one transaction, with everything needed to
  re-run it (the patient's records as they were, the model specs' text and hashes, popkin's
  version, the seed, the method) and its outputs (``recommendation.json``, the HTML and PDF
  reports). The database refuses to change or delete a row (triggers, created by the
  migration), so "immutable" does not depend on the application's good behaviour;
- ``audit_events``: who did what and when, append-only in the same way.

The schema is created and upgraded by Alembic (``popkin/service/migrations``), never by
``create_all``: an upgrade of popkin upgrades the database in place without losing data.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("viewer", "pharmacist", "admin")
JOB_STATES = ("queued", "running", "done", "failed", "interrupted")
ENTRY_KINDS = ("dose", "level", "covariate")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A moment in UTC, timezone-aware in Python on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("a naive datetime cannot be stored: give it a time zone")
        return None if value is None else value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Session(Base):
    __tablename__ = "sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    user: Mapped[User] = relationship()


class LoginAttempt(Base):
    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    succeeded: Mapped[bool] = mapped_column(Boolean)


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identifier: Mapped[str] = mapped_column(String(64), unique=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))

    entries: Mapped[list["Entry"]] = relationship(back_populates="patient",
                                                  order_by="Entry.id")


class Entry(Base):
    """One dose, level or covariate value of a patient, as entered. Times are hours on the
    patient's own clock (NONMEM's TIME), as in the datasets popkin reads."""

    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    time: Mapped[float | None] = mapped_column(Float, nullable=True)
    amount: Mapped[float | None] = mapped_column(Float, nullable=True)
    rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    compartment: Mapped[int | None] = mapped_column(Integer, nullable=True)
    interval: Mapped[float | None] = mapped_column(Float, nullable=True)
    additional: Mapped[int | None] = mapped_column(Integer, nullable=True)
    steady_state: Mapped[int | None] = mapped_column(Integer, nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    below_limit: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str | None] = mapped_column(String(32), nullable=True)
    text_value: Mapped[str | None] = mapped_column(String(64), nullable=True)
    unit: Mapped[str] = mapped_column(String(32), default="")
    source: Mapped[str] = mapped_column(String(16), default="form")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    superseded_by: Mapped[int | None] = mapped_column(ForeignKey("entries.id"), nullable=True)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(),
                                                           nullable=True)
    superseded_reason: Mapped[str] = mapped_column(Text, default="")

    patient: Mapped[Patient] = relationship(back_populates="entries")

    @property
    def current(self) -> bool:
        return self.superseded_at is None


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    request: Mapped[str] = mapped_column(Text)           # JSON: the form, as asked
    payload: Mapped[str] = mapped_column(Text)           # JSON: what the worker runs
    rerun_of: Mapped[int | None] = mapped_column(ForeignKey("recommendations.id"),
                                                 nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    recommendation_id: Mapped[int | None] = mapped_column(ForeignKey("recommendations.id"),
                                                          nullable=True)


class Recommendation(Base):
    __tablename__ = "recommendations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    request: Mapped[str] = mapped_column(Text)
    records_csv: Mapped[str] = mapped_column(Text)       # the patient's records as they were
    models: Mapped[str] = mapped_column(Text)            # JSON: [{name, spec_text, spec_hash}]
    popkin_version: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(16))
    result_json: Mapped[str] = mapped_column(Text)
    report_html: Mapped[str] = mapped_column(Text)
    report_pdf: Mapped[bytes] = mapped_column(LargeBinary)
    figure_png: Mapped[bytes] = mapped_column(LargeBinary)
    seconds: Mapped[float] = mapped_column(Float)
    rerun_of: Mapped[int | None] = mapped_column(ForeignKey("recommendations.id"),
                                                 nullable=True)
    same_as_original: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    action: Mapped[str] = mapped_column(String(48))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")

