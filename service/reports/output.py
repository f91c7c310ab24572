"""Reports as rows for a terminal table or CSV, and as the API's JSON."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.reports.audit import csv_cell
from service.reports.costs import CostBucket, CostReport
from service.reports.escalations import EscalationBucket, EscalationReport

ESCALATION_COLUMNS = (
    "bucket",
    "requests",
    "decided",
    "escalated",
    "escalation_rate",
    "reasons",
    "cheap_mean_confidence",
    "compared",
    "changed_share",
)
COST_COLUMNS = (
    "bucket",
    "requests",
    "cost_usd",
    "cost_mean_usd",
    "cost_p50_usd",
    "cost_p95_usd",
    "all_strong_cost_usd",
    "savings_usd",
    "savings_pct",
)


def _escalation_row(key: str, b: EscalationBucket) -> list[str]:
    reasons = " ".join(f"{reason}={n}" for reason, n in sorted(b.reasons.items()))
    values = [key, b.requests, b.decided, b.escalated, b.escalation_rate, reasons]
    return [csv_cell(v) for v in [*values, b.cheap_mean_confidence, b.compared, b.changed_share]]


def _cost_row(key: str, b: CostBucket) -> list[str]:
    values = [key, b.requests, b.cost_usd, b.cost_mean_usd, b.cost_p50_usd, b.cost_p95_usd]
    return [csv_cell(v) for v in [*values, b.all_strong_cost_usd, b.savings_usd, b.savings_pct]]


def rows(report: EscalationReport | CostReport) -> tuple[tuple[str, ...], list[list[str]]]:
    """The header and one row per bucket, then the totals row."""
    if isinstance(report, EscalationReport):
        body = [_escalation_row(b.key or "(none)", b) for b in report.buckets]
        return ESCALATION_COLUMNS, [*body, _escalation_row("total", report.totals)]
    body = [_cost_row(b.key or "(none)", b) for b in report.buckets]
    return COST_COLUMNS, [*body, _cost_row("total", report.totals)]


def to_csv(report: EscalationReport | CostReport) -> str:
    header, body = rows(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(body)
    return buffer.getvalue()


def _pct(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _usd(value: Decimal | None, places: int = 4) -> str:
    return "" if value is None else f"${value:,.{places}f}"


def _human(b: EscalationBucket | CostBucket) -> list[str]:
    if isinstance(b, EscalationBucket):
        confidence = "" if b.cheap_mean_confidence is None else f"{b.cheap_mean_confidence:.3f}"
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(b.reasons.items(), key=lambda r: -r[1]))
        return [str(b.requests), str(b.escalated), _pct(b.escalation_rate), confidence, _pct(b.changed_share), reasons]
    return [
        str(b.requests),
        _usd(b.cost_usd),
        _usd(b.cost_mean_usd, 6),
        _usd(b.cost_p50_usd, 6),
        _usd(b.cost_p95_usd, 6),
        _usd(b.all_strong_cost_usd),
        _usd(b.savings_usd),
        "" if b.savings_pct is None else f"{b.savings_pct}%",
    ]


_HUMAN_COLUMNS = {
    "escalation": ("requests", "escalated", "rate", "cheap conf.", "changed", "reasons"),
    "cost": ("requests", "cost", "per req.", "p50", "p95", "all-strong", "saved", "saved %"),
}


def print_table(report: EscalationReport | CostReport, console: Console) -> None:
    kind = "escalation" if isinstance(report, EscalationReport) else "cost"
    title = escape(f"{kind}s by {report.group_by}, {report.team or 'all teams'}")
    caption = f"{report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC"
    table = Table(title=title, caption=caption)
    table.add_column(report.group_by, overflow="fold")
    for column in _HUMAN_COLUMNS[kind]:
        table.add_column(column, justify="left" if column == "reasons" else "right")
    buckets: list[Any] = list(report.buckets)
    for i, bucket in enumerate(buckets):
        table.add_row(escape(bucket.key or "(none)"), *_human(bucket), end_section=i == len(buckets) - 1)
    table.add_row("total", *_human(report.totals), style="bold")
    console.print(table)
    if isinstance(report, CostReport):
        be = report.break_even
        observed = f"{be.observed_rate:.1%}" if be.observed_rate is not None else "n/a"
        console.print(
            f"Break-even escalation rate for {be.cheap_model} -> {be.strong_model}: {be.rate:.1%} "
            f"({be.basis} token mix); observed: {observed}."
        )
        for warning in report.warnings:
            console.print(f"[bold yellow]warning:[/] {warning}")
