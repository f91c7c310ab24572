"""report columns: what the reports read without joining the ledger to requests

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=20, scale=10)
STATISTICS = [
    ("st_requests_created_day", "requests", "(created_at AT TIME ZONE 'UTC')::date"),
    ("st_requests_created_hour", "requests", "date_trunc('hour', created_at AT TIME ZONE 'UTC')"),
    ("st_attempts_request_created_day", "attempts", "(request_created_at AT TIME ZONE 'UTC')::date"),
]


def upgrade() -> None:
    op.add_column("requests", sa.Column("cheap_label", sa.Text(), nullable=True))
    op.add_column("requests", sa.Column("cheap_confidence", sa.Numeric(precision=9, scale=6), nullable=True))
    op.add_column("requests", sa.Column("all_strong_cost_usd", MONEY, server_default="0", nullable=False))
    op.add_column("attempts", sa.Column("request_created_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("attempts", sa.Column("task_hash", sa.String(length=64), nullable=True))
    op.add_column("attempts", sa.Column("strong_equiv_usd", MONEY, nullable=True))
    # Backfill from the rows already there.
    op.execute(
        "UPDATE attempts a SET request_created_at = r.created_at, task_hash = r.task_hash "
        "FROM requests r WHERE r.id = a.request_id"
    )
    op.execute(
        "UPDATE requests r SET cheap_label = a.label, cheap_confidence = a.confidence FROM attempts a "
        "WHERE a.request_id = r.id AND a.stage = 'cheap' AND a.outcome = 'answered'"
    )
    _backfill_counterfactual()
    op.alter_column("attempts", "request_created_at", nullable=False)
    op.alter_column("attempts", "task_hash", nullable=False)
    op.create_index("ix_requests_created", "requests", ["created_at"])
    op.create_index("ix_attempts_request_created", "attempts", ["request_created_at"])
    op.create_index("ix_attempts_team_request_created", "attempts", ["team_id", "request_created_at"])
    # The reports group by these expressions; without statistics on them the planner expects one group per
    # row and sorts a million rows where a hash table of 30 days would do.
    for name, table, expression in STATISTICS:
        op.execute(f"CREATE STATISTICS {name} ON ({expression}) FROM {table}")


def _backfill_counterfactual() -> None:
    """Price every cheap-stage attempt at its request's strong model, as the service now does when it settles.

    The prices live in the catalog (code, dated rows), so this runs in Python, a batch at a time.
    """
    from service.core.errors import ConfigurationError
    from service.money.catalog import Catalog, TokenUsage

    catalog = Catalog()
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT a.id, r.strong_model, a.reserved_at, a.input_token_bound, a.max_tokens, a.input_tokens, "
            "a.cache_write_5m_tokens, a.cache_write_1h_tokens, a.cache_read_tokens, a.output_tokens "
            "FROM attempts a JOIN requests r ON r.id = a.request_id WHERE a.stage = 'cheap' ORDER BY a.id"
        )
    ).all()
    updates = []
    for row in rows:
        try:
            if row.input_tokens is None:  # unknown outcome: charged at its reservation, so the strong worst case
                price = catalog.price(row.strong_model, row.reserved_at, row.input_token_bound)
                equiv = price.worst_case(row.input_token_bound, row.max_tokens)
            else:
                usage = TokenUsage(
                    input=row.input_tokens,
                    cache_write_5m=row.cache_write_5m_tokens or 0,
                    cache_write_1h=row.cache_write_1h_tokens or 0,
                    cache_read=row.cache_read_tokens or 0,
                    output=row.output_tokens or 0,
                )
                equiv = catalog.price(row.strong_model, row.reserved_at, usage.prompt_tokens).cost(usage)
        except ConfigurationError:  # a model the catalog has no price for: left NULL, counted as 0
            continue
        updates.append({"id": row.id, "equiv": equiv})
    for start in range(0, len(updates), 5000):
        conn.execute(
            sa.text("UPDATE attempts SET strong_equiv_usd = :equiv WHERE id = :id"), updates[start : start + 5000]
        )
    op.execute(
        "UPDATE requests r SET all_strong_cost_usd = s.total FROM ("
        "SELECT request_id, sum(strong_equiv_usd) AS total FROM attempts "
        "WHERE stage = 'cheap' AND state = 'settled' AND strong_equiv_usd IS NOT NULL GROUP BY request_id"
        ") s WHERE s.request_id = r.id"
    )


def downgrade() -> None:
    for name, _, _ in STATISTICS:
        op.execute(f"DROP STATISTICS IF EXISTS {name}")
    op.drop_index("ix_attempts_team_request_created", table_name="attempts")
    op.drop_index("ix_attempts_request_created", table_name="attempts")
    op.drop_index("ix_requests_created", table_name="requests")
    op.drop_column("attempts", "strong_equiv_usd")
    op.drop_column("attempts", "task_hash")
    op.drop_column("attempts", "request_created_at")
    op.drop_column("requests", "all_strong_cost_usd")
    op.drop_column("requests", "cheap_confidence")
    op.drop_column("requests", "cheap_label")
