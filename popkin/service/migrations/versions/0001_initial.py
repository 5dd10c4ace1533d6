"""The first schema: users, sessions, tokens, login attempts, patients and their entries, jobs,
recommendations and the audit trail; recommendations and audit events refuse UPDATE and DELETE.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MOMENT = sa.DateTime(timezone=True)
APPEND_ONLY = ("recommendations", "audit_events")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", MOMENT, nullable=False))
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("expires_at", MOMENT, nullable=False))
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("revoked_at", MOMENT, nullable=True))
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, index=True),
        sa.Column("address", sa.String(64), nullable=False, index=True),
        sa.Column("at", MOMENT, nullable=False, index=True),
        sa.Column("succeeded", sa.Boolean, nullable=False))
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("identifier", sa.String(64), nullable=False, unique=True),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False))
    op.create_table(
        "entries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("patients.id"), nullable=False,
                  index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("time", sa.Float, nullable=True),
        sa.Column("amount", sa.Float, nullable=True),
        sa.Column("rate", sa.Float, nullable=True),
        sa.Column("duration", sa.Float, nullable=True),
        sa.Column("compartment", sa.Integer, nullable=True),
        sa.Column("interval", sa.Float, nullable=True),
        sa.Column("additional", sa.Integer, nullable=True),
        sa.Column("steady_state", sa.Integer, nullable=True),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("below_limit", sa.Boolean, nullable=False),
        sa.Column("name", sa.String(32), nullable=True),
        sa.Column("text_value", sa.String(64), nullable=True),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("superseded_by", sa.Integer, sa.ForeignKey("entries.id"), nullable=True),
        sa.Column("superseded_at", MOMENT, nullable=True),
        sa.Column("superseded_reason", sa.Text, nullable=False))
    op.create_table(
        "recommendations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("patients.id"), nullable=False,
                  index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("records_csv", sa.Text, nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("popkin_version", sa.String(32), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("result_json", sa.Text, nullable=False),
        sa.Column("report_html", sa.Text, nullable=False),
        sa.Column("report_pdf", sa.LargeBinary, nullable=False),
        sa.Column("figure_png", sa.LargeBinary, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("rerun_of", sa.Integer, sa.ForeignKey("recommendations.id"), nullable=True),
        sa.Column("same_as_original", sa.Boolean, nullable=True))
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("patients.id"), nullable=False,
                  index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("rerun_of", sa.Integer, sa.ForeignKey("recommendations.id"), nullable=True),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("started_at", MOMENT, nullable=True),
        sa.Column("finished_at", MOMENT, nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("recommendation_id", sa.Integer, sa.ForeignKey("recommendations.id"),
                  nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", MOMENT, nullable=False, index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("action", sa.String(48), nullable=False),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("patients.id"), nullable=True),
        sa.Column("detail", sa.Text, nullable=False))
    for table in APPEND_ONLY:
        _forbid_changes(table)


def _forbid_changes(table: str) -> None:
    """The database itself refuses UPDATE and DELETE on an append-only table."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END")
    elif dialect == "postgresql":
        op.execute(f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{table} are append-only'; END $$")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()")
    else:
        raise RuntimeError(f"popkin's service supports SQLite and PostgreSQL, not {dialect}")


def downgrade() -> None:
    raise RuntimeError("the first schema cannot be downgraded: it would delete the audit trail")
