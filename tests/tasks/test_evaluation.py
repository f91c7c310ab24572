"""`cascade eval`: both models asked once per labelled text, the answers stored and charged, then every threshold
swept from them with no further call. The sweep is recomputed here from the stored answers and the ledger."""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from service.core.database import Database
from service.core.settings import Settings
from service.simulator.corpus import SAMPLES
from service.tables import Attempt, EvalItem, EvalRun, Request
from service.tasks.service import Tasks, TaskSpec
from tests.harness import SENTIMENT, assert_ledger_invariants
from tests.processes import clean_env, run

Q = Decimal("0.000001")


async def make_task(db: Database, settings: Settings, team: str, name: str, labels: list[str]) -> None:
    from service.money.catalog import Catalog
    from service.tenancy.keys import issue_key
    from tests.harness import team_id_of

    await issue_key(db, team)
    spec = TaskSpec(
        tuple(labels), None, (), Decimal("0.85"), settings.cheap_model, settings.strong_model, Decimal(0), "5m", 0
    )
    await Tasks(db, settings, Catalog()).put(await team_id_of(db, team), name, spec)


async def evaluate(database_url: str, *args: str, simulate: bool = True) -> tuple[int, str, str]:
    """`cascade eval ...` in a directory of its own (a plot not asked for elsewhere is written there)."""
    flags = ("--simulate",) if simulate else ()
    with tempfile.TemporaryDirectory() as cwd:
        return await run("eval", *args, *flags, env=clean_env(DATABASE_URL=database_url, COLUMNS="200"), cwd=Path(cwd))


def sentiment_file(path: Path) -> Path:
    rows = [{"text": s.text, "label": s.truth} for s in SAMPLES if s.task == "sentiment"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def replay(items: list[EvalItem], threshold: Decimal | None) -> dict[str, str]:
    """The cascade at `threshold` (None: the strong model alone), from the stored answers."""
    right = escalated = 0
    cost = Decimal(0)
    for item in items:
        keep = threshold is not None and item.cheap_confidence is not None and item.cheap_confidence >= threshold
        right += (item.cheap_label if keep else item.strong_label) == item.gold
        escalated += not keep
        cost += (item.cheap_cost_usd if threshold is not None else 0) + (0 if keep else item.strong_cost_usd)
    n = len(items)
    return {
        "threshold": None if threshold is None else str(threshold),
        "accuracy": str((Decimal(right) / n).quantize(Q, ROUND_HALF_EVEN)),
        "escalation_rate": str((Decimal(escalated) / n).quantize(Q, ROUND_HALF_EVEN)),
        "cost_per_1000_usd": str((1000 * cost / n).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)),
    }


def output_json(out: str) -> dict[str, Any]:
    start = out.index("{")
    end = out.rindex("}") + 1
    parsed: dict[str, Any] = json.loads(out[start:end])
    return parsed


async def test_an_evaluation_asks_both_models_once_stores_the_answers_and_sweeps_them(
    database_url: str, db: Database, make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings()
    await make_task(db, settings, "evals", "sentiment", SENTIMENT)
    data = sentiment_file(tmp_path / "sentiment.jsonl")
    plot = tmp_path / "plot.svg"
    code, out, err = await evaluate(
        database_url, str(data), "--task", "sentiment", "--team", "evals", "--plot", str(plot), "--format", "json"
    )
    assert code == 0, err + out
    assert "simulator" in out and "simulated, not Claude's" in out, "it says in one line that answers are simulated"
    body = output_json(out)
    n = sum(1 for s in SAMPLES if s.task == "sentiment")
    async with db.transaction() as session:
        items = list((await session.scalars(select(EvalItem).order_by(EvalItem.seq))).all())
        attempts = list((await session.scalars(select(Attempt))).all())
        requests = list((await session.scalars(select(Request))).all())
    assert len(items) == body["items"] == n
    # Once per model per item (the simulator fails nothing here, so no retries), each call charged in the ledger.
    assert Counter(a.stage for a in attempts) == {"cheap": n, "strong": n}
    assert all(r.eval_run_id is not None and str(r.eval_run_id) == body["run"] for r in requests)
    by_request = {r.id: r for r in requests}
    for item in items:
        mine = [a for a in attempts if a.request_id == item.request_id]
        assert item.cheap_cost_usd == sum(a.cost_usd for a in mine if a.stage == "cheap")
        assert item.strong_cost_usd == sum(a.cost_usd for a in mine if a.stage == "strong")
        assert by_request[item.request_id].cheap_label == item.cheap_label
        assert by_request[item.request_id].label == item.strong_label
    sweep = [replay(items, Decimal(k) / 100) for k in range(101)]
    assert body["sweep"] == sweep
    assert body["all_strong"] == replay(items, None)
    assert body["fixed"] == replay(items, Decimal("0.85"))
    strong = Decimal(body["all_strong"]["accuracy"])
    assert body["cheapest_at_strong_accuracy"] == next(p for p in sweep if Decimal(p["accuracy"]) >= strong)
    bar = max(strong, Decimal(body["fixed"]["accuracy"]))
    recommended = body["recommended"]
    assert recommended == next(p for p in sweep if Decimal(p["accuracy"]) >= bar)
    # The acceptance figure: on the simulator's labelled sentiment texts the recommended threshold is as accurate
    # as the fixed 0.85 at a lower cost.
    assert Decimal(recommended["accuracy"]) >= Decimal(body["fixed"]["accuracy"])
    assert Decimal(recommended["cost_per_1000_usd"]) < Decimal(body["fixed"]["cost_per_1000_usd"])
    svg = plot.read_text()
    assert svg.startswith("<svg") and svg.count("<circle") >= 101 and "recommended" in svg
    # An evaluation is not a cascade decision: the escalation reports leave it out; the money is in the caps.
    await assert_ledger_invariants(db)

    again_code, again_out, _ = await evaluate(
        database_url,
        "--run",
        body["run"],
        "--task",
        "sentiment",
        "--team",
        "evals",
        "--plot",
        str(plot),
        "--format",
        "json",
    )
    assert again_code == 0 and output_json(again_out)["sweep"] == sweep
    async with db.transaction() as session:
        assert len((await session.scalars(select(Attempt))).all()) == len(attempts), "a re-sweep makes no call"


async def test_a_bad_file_is_refused_naming_its_line(
    database_url: str, db: Database, make_settings: Any, tmp_path: Path
) -> None:
    await make_task(db, make_settings(), "evals", "sentiment", SENTIMENT)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "positive"}\n{"text": "odd", "label": "sarcastic"}\n')
    code, out, err = await evaluate(database_url, str(bad), "--task", "sentiment", "--team", "evals")
    assert code == 1 and re.search(r"line 2: label 'sarcastic' is not one of the task's labels", out + err)
    code, out, err = await evaluate(database_url, str(bad), "--task", "missing", "--team", "evals")
    assert code == 1 and "no task 'missing'" in out + err
    async with db.transaction() as session:
        assert (await session.scalars(select(Attempt))).all() == [], "nothing was asked"


async def test_a_simulated_evaluation_is_refused_on_a_configured_database_unless_asked_for(
    database_url: str, db: Database, make_settings: Any, tmp_path: Path
) -> None:
    await make_task(db, make_settings(), "evals", "sentiment", SENTIMENT)
    data = sentiment_file(tmp_path / "sentiment.jsonl")
    code, _, err = await evaluate(database_url, str(data), "--task", "sentiment", "--team", "evals", simulate=False)
    assert code != 0 and "--simulate" in err and "caps and ledger" in err
    async with db.transaction() as session:
        assert (await session.scalars(select(Attempt))).all() == []


async def test_a_cap_stops_an_evaluation_and_every_paid_item_is_stored(
    database_url: str, db: Database, make_settings: Any, tmp_path: Path
) -> None:
    from service.tenancy.teams import Teams

    settings = make_settings()
    await make_task(db, settings, "evals", "sentiment", SENTIMENT)
    await make_task(db, settings, "evals", "other", SENTIMENT)
    await Teams(db).set_caps("evals", Decimal("0.01"), None, datetime.now(UTC).date())
    data = sentiment_file(tmp_path / "sentiment.jsonl")
    code, out, err = await evaluate(
        database_url, str(data), "--task", "sentiment", "--team", "evals", "--concurrency", "4", "--format", "json"
    )
    assert code == 0, err + out
    assert "stopped" in out and "team daily cost cap" in out
    body = output_json(out)
    async with db.transaction() as session:
        items = list((await session.scalars(select(EvalItem))).all())
        requests = list((await session.scalars(select(Request))).all())
        run_row = (await session.scalars(select(EvalRun))).one()
    assert 0 < body["items"] == len(items) < sum(1 for s in SAMPLES if s.task == "sentiment")
    paid = {r.id for r in requests if r.cost_usd > 0}
    assert paid <= {i.request_id for i in items}, "every request that cost money has its item"
    assert run_row.status == "stopped" and run_row.simulated
    await assert_ledger_invariants(db)
    # A run is swept only for the task it evaluated.
    code, out, err = await evaluate(database_url, "--run", str(run_row.id), "--task", "other", "--team", "evals")
    assert code == 1 and "no evaluation run" in out + err


async def test_each_stage_of_an_evaluation_item_has_the_request_deadline_of_its_own(
    database_url: str, db: Database, make_settings: Any, tmp_path: Path
) -> None:
    """No call outlives the request deadline (so no reservation can reach the sweeper's TTL while its holder
    waits): a cheap call slower than the deadline times out, and the strong stage still gets a deadline."""
    settings = make_settings()
    await make_task(db, settings, "evals", "sentiment", SENTIMENT)
    data = tmp_path / "slow.jsonl"
    text = "The parcel came on time. {{sim:cheap=slow:1.6+conf=0.95;strong=slow:0.5+conf=0.95}}"
    data.write_text(json.dumps({"text": text, "label": "positive"}) + "\n")
    env = clean_env(DATABASE_URL=database_url, COLUMNS="200", CASCADE_REQUEST_DEADLINE_S="1", CASCADE_MAX_ATTEMPTS="1")
    with tempfile.TemporaryDirectory() as cwd:
        code, out, err = await run(
            "eval",
            str(data),
            "--task",
            "sentiment",
            "--team",
            "evals",
            "--simulate",
            "--format",
            "json",
            env=env,
            cwd=Path(cwd),
        )
    assert code == 0, err + out
    async with db.transaction() as session:
        (item,) = (await session.scalars(select(EvalItem))).all()
        attempts = list((await session.scalars(select(Attempt).order_by(Attempt.id))).all())
    assert [(a.stage, a.outcome) for a in attempts] == [("cheap", "timeout"), ("strong", "answered")]
    assert attempts[0].cost_usd == attempts[0].reserved_usd, "a call cut off is charged its reservation"
    assert item.cheap_label is None and item.strong_label is not None
    await assert_ledger_invariants(db)
