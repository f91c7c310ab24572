"""ledger caps teams keys

Revision ID: 0001
Revises:
Create Date: 2026-11-25 08:45:31.254454
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "teams",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_teams_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_api_keys_team_id_teams"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_team_id"), "api_keys", ["team_id"], unique=False)
    op.create_table(
        "caps",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=True),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("cap_usd", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("spent_usd", sa.Numeric(precision=20, scale=10), server_default="0", nullable=False),
        sa.Column("reserved_usd", sa.Numeric(precision=20, scale=10), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("(scope = 'team') = (team_id IS NOT NULL)", name=op.f("ck_caps_team_iff_team_scope")),
        sa.CheckConstraint("period IN ('day', 'month')", name=op.f("ck_caps_period_known")),
        sa.CheckConstraint("scope IN ('global', 'team')", name=op.f("ck_caps_scope_known")),
        sa.CheckConstraint("spent_usd + reserved_usd <= cap_usd", name=op.f("ck_caps_within_cap")),
        sa.CheckConstraint("spent_usd >= 0 AND reserved_usd >= 0", name=op.f("ck_caps_amounts_not_negative")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_caps_team_id_teams"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_caps")),
        sa.UniqueConstraint(
            "scope",
            "team_id",
            "period",
            "period_start",
            name="uq_caps_scope_team_period",
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_table(
        "requests",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("task_hash", sa.String(length=64), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("threshold", sa.Numeric(precision=6, scale=4), nullable=False),
        sa.Column("text_chars", sa.Integer(), nullable=False),
        sa.Column("cheap_model", sa.String(length=64), nullable=False),
        sa.Column("strong_model", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("confidence", sa.Numeric(precision=6, scale=4), nullable=True),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("escalated", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("escalation_reason", sa.String(length=32), nullable=True),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=10), server_default="0", nullable=False),
        sa.Column("error_type", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'ok', 'failed', 'refused')", name=op.f("ck_requests_status_known")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_requests_team_id_teams"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
    )
    op.create_index("ix_requests_team_created", "requests", ["team_id", "created_at"], unique=False)
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=8), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("cap_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("billing_day", sa.Date(), nullable=False),
        sa.Column("reserved_usd", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("input_token_bound", sa.Integer(), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("price_id", sa.String(length=80), nullable=False),
        sa.Column("price_input", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("price_cache_write_5m", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("price_cache_write_1h", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("price_cache_read", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("price_output", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("stop_reason", sa.String(length=40), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("confidence", sa.Numeric(precision=6, scale=4), nullable=True),
        sa.Column("escalation_reason", sa.String(length=32), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_write_5m_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_write_1h_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_read_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=10), nullable=True),
        sa.Column("upstream_request_id", sa.String(length=128), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("settled_by", sa.String(length=16), nullable=True),
        sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("stage IN ('cheap', 'strong')", name=op.f("ck_attempts_stage_known")),
        sa.CheckConstraint("state = 'reserved' OR cost_usd IS NOT NULL", name=op.f("ck_attempts_settled_has_cost")),
        sa.CheckConstraint("state IN ('reserved', 'settled')", name=op.f("ck_attempts_state_known")),
        sa.CheckConstraint("cost_usd IS NULL OR cost_usd >= 0", name=op.f("ck_attempts_cost_not_negative")),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name=op.f("fk_attempts_request_id_requests"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_attempts_team_id_teams"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
        sa.UniqueConstraint("request_id", "attempt_no", name="uq_attempts_request_attempt"),
    )
    op.create_index("ix_attempts_billing_day_team", "attempts", ["billing_day", "team_id"], unique=False)
    op.create_index(
        "ix_attempts_reserved", "attempts", ["reserved_at"], unique=False, postgresql_where="state = 'reserved'"
    )


def downgrade() -> None:

    op.drop_index("ix_attempts_reserved", table_name="attempts", postgresql_where="state = 'reserved'")
    op.drop_index("ix_attempts_billing_day_team", table_name="attempts")
    op.drop_table("attempts")
    op.drop_index("ix_requests_team_created", table_name="requests")
    op.drop_table("requests")
    op.drop_table("caps")
    op.drop_index(op.f("ix_api_keys_team_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("teams")
