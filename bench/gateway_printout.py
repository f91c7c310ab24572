"""The gateway bench's report as printed without --json: the service's table, the simulator called directly,
LiteLLM's table with --litellm, and the notes."""

from __future__ import annotations

from typing import Any

from measurements import RUN_NOTES, Cell  # bench/measurements.py
from wrk import WrkResult  # bench/wrk.py


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def errors_text(r: WrkResult | None) -> str:
    if r is None:
        return "-"
    if r.failure:
        return "wrk failed"
    return f"{r.non_2xx}" + (f"+{r.socket_errors}s" if r.socket_errors else "")


def print_report(cells: list[Cell], meta: dict[str, Any]) -> None:
    print(
        f"service: {meta['workers']} workers, caps and ledger on; PostgreSQL {meta['postgres']} "
        f"({meta['database']}, max_connections {meta['max_connections']}); {meta['duration_s']:g} s per run after "
        f"{meta['warmup_s']:g} s warm-up; wrk -t min(c,2) --timeout {meta['timeout_s']:g}s"
    )
    print(f"text: {meta['text']!r} ({meta['expected']})")
    print()
    headers = [
        "sim ms", "conc", "req/s", "p50 ms", "p99 ms", "direct p50", "overhead p50", "non-2xx", "CPU ms/req",
        "RSS MB/wkr", "ledger rows/s", "escalated", "flag",
    ]  # fmt: skip
    rows = []
    for cell in cells:
        s = cell.service
        w = s.wrk if s else None
        rows.append([
            f"{cell.latency_ms:g}", str(cell.concurrency),
            fmt(w.rps if w and not w.failure else None), fmt(w.p50_ms if w else None, 2),
            fmt(w.p99_ms if w else None, 2), fmt(cell.direct.p50_ms if cell.direct else None, 2),
            fmt(s.overhead_p50_ms if s else None, 2), errors_text(w),
            fmt(s.cpu_ms_per_request if s else None, 2), fmt(s.rss_mb_per_worker if s else None, 0),
            fmt(cell.ledger_rows_per_s, 0),
            "-" if cell.escalation_share is None else f"{cell.escalation_share:.1%}",
            cell.flag,
        ])  # fmt: skip
    print(table(headers, rows))

    print()
    print("simulator called directly (the baseline):")
    rows = [
        [
            f"{cell.latency_ms:g}", str(cell.concurrency), fmt(d.rps if not d.failure else None),
            fmt(d.p50_ms, 2), fmt(d.p99_ms, 2), errors_text(d),
        ]
        for cell in cells
        if (d := cell.direct) is not None
    ]  # fmt: skip
    print(table(["sim ms", "conc", "req/s", "p50 ms", "p99 ms", "non-2xx"], rows))

    if any(cell.litellm for cell in cells):
        print()
        print("LiteLLM proxy (POST /v1/messages, 2 workers, no database) on the same simulator:")
        rows = []
        for cell in cells:
            lt, s = cell.litellm, cell.service
            if lt is None:
                continue
            ratio = s.wrk.rps / lt.wrk.rps if s and lt.wrk.rps and not s.wrk.failure else None
            rows.append([
                f"{cell.latency_ms:g}", str(cell.concurrency), fmt(lt.wrk.rps if not lt.wrk.failure else None),
                fmt(lt.wrk.p50_ms, 2), fmt(lt.wrk.p99_ms, 2), fmt(lt.overhead_p50_ms, 2), errors_text(lt.wrk),
                fmt(lt.cpu_ms_per_request, 2), fmt(lt.rss_mb_per_worker, 0),
                "-" if ratio is None else f"{ratio:.2f}x",
                fmt(s.overhead_p50_ms if s else None, 2),
            ])  # fmt: skip
        print(table(
            ["sim ms", "conc", "req/s", "p50 ms", "p99 ms", "overhead p50", "non-2xx", "CPU ms/req", "RSS MB/wkr",
             "service/litellm req/s", "service overhead p50"],
            rows,
        ))  # fmt: skip
    elif meta.get("litellm"):
        print()
        print(f"LiteLLM: {meta['litellm']}")

    notes = list(RUN_NOTES)
    for cell in cells:
        where = f"{cell.latency_ms:g} ms, c={cell.concurrency}"
        runs = [("simulator direct", cell.direct), ("service", cell.service.wrk if cell.service else None)]
        runs.append(("LiteLLM", cell.litellm.wrk if cell.litellm else None))
        for name, w in runs:
            if w and (w.non_2xx or w.socket_errors):
                codes = ", ".join(f"{n} x {code}" for code, n in sorted(w.status.items()) if not code.startswith("2"))
                socket = ", ".join(f"{n} {kind}" for kind, n in w.errors.items() if kind != "status" and n)
                notes.append(
                    f"{where}: {name} non-2xx {codes or '-'}" + (f"; socket errors {socket}" if socket else "")
                )
            if w and w.failure:
                notes.append(f"{where}: {name}: {w.failure}")
        notes += [f"{where}: {note}" for note in cell.notes]
        if cell.drain_s is not None and cell.drain_s > 5:
            notes.append(f"{where}: the service took {cell.drain_s:.0f} s to finish what wrk left in flight")
        for shape, n in cell.log_problems.items():
            notes.append(f"{where}: service log {n} x {shape}")
    if notes:
        print()
        print("notes:")
        for note in notes:
            print(f"  {note}")
