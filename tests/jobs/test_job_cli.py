"""`cascade jobs ...` as a user runs it: real CLI processes against the service, with its job worker inside."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from service.core.database import Database
from service.simulator import SimulatorConfig
from tests.harness import SENTIMENT, Service, assert_ledger_invariants
from tests.jobs.harness import TEXTS, own_simulator, results, wait_for
from tests.processes import CASCADE, clean_env

LABELS = ",".join(SENTIMENT)
_SUMMARY = re.compile(
    r"^job (?P<id>[0-9a-f-]{36}): (?P<status>\w+)(?: \((?P<detail>.*)\))?\n"
    r"  items (?P<total>\d+): done (?P<done>\d+), failed (?P<failed>\d+), canceled (?P<canceled>\d+)\n"
    r"  cheap stage: (?P<cheap_pending>\d+) pending, (?P<cheap_in_batch>\d+) in a batch\n"
    r"  strong stage: (?P<strong_pending>\d+) pending, (?P<strong_in_batch>\d+) in a batch\n"
    r"  cost \$(?P<cost>[0-9.E-]+)\n\Z"
)


async def cascade(*args: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    """Run `cascade ...` in `cwd` (so no .env of the checkout is read); returns (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        CASCADE,
        *args,
        cwd=cwd,
        env=clean_env(COLUMNS="200", **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def as_user(service: Service) -> dict[str, str]:
    """The service's address and the team's key, as the environment gives them to the CLI."""
    return {"CASCADE_URL": str(service.client.base_url), "CASCADE_API_KEY": service.key}


def summary(out: str) -> dict[str, str]:
    match = _SUMMARY.match(out)
    assert match is not None, f"not a job summary: {out!r}"
    return match.groupdict()


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def mixed_items(n: int) -> list[dict[str, Any]]:
    """Every third item is sure to escalate (the cheap model's confidence is 0.2), the rest sure not to (0.99)."""
    return [
        {
            "id": f"doc-{i}",
            "text": f"{TEXTS[i % len(TEXTS)]} (#{i}) {{{{sim:cheap=conf={'0.2' if i % 3 == 0 else '0.99'}}}}}",
        }
        for i in range(n)
    ]


async def api_status(service: Service, job_id: str) -> dict[str, Any]:
    response = await service.client.get(f"/v1/jobs/{job_id}", headers=service.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def api_jobs(service: Service) -> list[dict[str, Any]]:
    response = await service.client.get("/v1/jobs", headers=service.auth)
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


async def test_submit_waits_through_both_stages_then_results_and_status_match_the_api(
    jobs_service: Service, tmp_path: Path
) -> None:
    service = jobs_service
    n = 12
    write_jsonl(tmp_path / "items.jsonl", mixed_items(n))
    options = ("--instructions", "Product reviews.", "--threshold", "0.9")

    code, out, err = await cascade(
        "jobs", "submit", "items.jsonl", "--labels", LABELS, *options, cwd=tmp_path, **as_user(service)
    )
    assert code == 0, err
    done = summary(out)
    job_id = done["id"]
    api = await api_status(service, job_id)
    assert api["status"] == "done" and done["status"] == "done"
    assert api["labels"] == SENTIMENT and api["item_count"] == n
    assert api["instructions"] == "Product reviews." and api["threshold"] == 0.9
    counts = api["counts"]
    assert counts["escalated"] == n // 3  # the items the cheap model was unsure of, and only those
    assert (done["total"], done["done"], done["failed"], done["canceled"]) == (str(n), str(n), "0", "0")
    assert [done[k] for k in ("cheap_pending", "cheap_in_batch", "strong_pending", "strong_in_batch")] == ["0"] * 4
    assert Decimal(done["cost"]) == Decimal(api["cost_usd"]) > 0
    # The progress went to stderr: the job's size, then a bar per stage, each full at the end.
    assert f"job {job_id}: {n} items" in err
    cheap_bar = next(line for line in err.splitlines() if "cheap model" in line)
    strong_bar = next(line for line in err.splitlines() if "strong model" in line)
    assert f"{n}/{n}" in cheap_bar and "done" in cheap_bar, err
    assert f"{n // 3}/{n // 3}" in strong_bar, err

    code, out, err = await cascade("jobs", "results", job_id, cwd=tmp_path, **as_user(service))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == await results(service, job_id)
    assert [line["id"] for line in lines] == [item["id"] for item in mixed_items(n)]
    assert all(line["status"] == "done" and line["label"] in SENTIMENT for line in lines)
    assert [line["escalated"] for line in lines] == [i % 3 == 0 for i in range(n)]
    assert f"{n} result lines" in err

    code, out, err = await cascade("jobs", "status", job_id, cwd=tmp_path, **as_user(service))
    assert code == 0, err
    assert summary(out) == done
    await assert_ledger_invariants(service.db)


async def test_submit_no_wait_prints_only_the_job_id_and_returns_while_it_runs_then_wait_follows_it(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "items.jsonl", mixed_items(6))
    async with own_simulator(database_url, db, SimulatorConfig(batch_processing_s=1.0)) as service:
        code, out, err = await cascade(
            "jobs", "submit", "items.jsonl", "--labels", LABELS, "--no-wait", cwd=tmp_path, **as_user(service)
        )
        assert code == 0, err
        assert out.endswith("\n") and len(out.splitlines()) == 1, out
        job_id = out.strip()
        assert str(uuid.UUID(job_id)) == job_id
        running = await api_status(service, job_id)
        assert running["status"] in ("queued", "running"), running  # each stage takes 1 s: the CLI did not wait
        assert running["item_count"] == 6
        assert [job["id"] for job in await api_jobs(service)] == [job_id]

        code, out, err = await cascade("jobs", "wait", job_id, cwd=tmp_path, **as_user(service))
        assert code == 0, err
        ended = summary(out)
        assert (ended["id"], ended["status"], ended["done"]) == (job_id, "done", "6")
        assert (await api_status(service, job_id))["status"] == "done"
        assert "cheap model" in err and "strong model" in err
        await assert_ledger_invariants(db)


async def test_cancel_ends_a_job_in_progress_and_its_results_cover_every_item(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    n = 9
    write_jsonl(tmp_path / "items.jsonl", mixed_items(n))
    # Batches of 3 items, one open at a time, each in progress for a minute: the job cannot end on its own here.
    slow = SimulatorConfig(batch_processing_s=60.0)
    async with own_simulator(database_url, db, slow, CASCADE_JOB_BATCH_ITEMS=3, CASCADE_JOB_OPEN_BATCHES=1) as service:
        user = as_user(service)
        code, out, err = await cascade(
            "jobs", "submit", "items.jsonl", "--labels", LABELS, "--no-wait", cwd=tmp_path, **user
        )
        assert code == 0, err
        job_id = out.strip()
        # Wait until one batch is at the API and the other items wait their turn.
        deadline = asyncio.get_running_loop().time() + 20
        while (status := await api_status(service, job_id))["counts"]["cheap"]["in_batch"] == 0:
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.05)
        assert status["counts"]["cheap"] == {"pending": n - 3, "in_batch": 3}, status

        code, out, err = await cascade("jobs", "cancel", job_id, cwd=tmp_path, **user)
        assert code == 0, err
        asked = summary(out)
        assert asked["id"] == job_id and asked["status"] in ("canceling", "canceled"), out

        code, out, err = await cascade("jobs", "wait", job_id, cwd=tmp_path, **user)
        assert code == 0, err
        ended = summary(out)
        assert ended["status"] == "canceled", out
        assert (ended["total"], ended["done"], ended["canceled"]) == (str(n), "0", str(n)), out
        assert (await api_status(service, job_id))["status"] == "canceled"

        code, out, err = await cascade("jobs", "results", job_id, cwd=tmp_path, **user)
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines == await results(service, job_id)
        assert [line["id"] for line in lines] == [f"doc-{i}" for i in range(n)]
        assert {line["status"] for line in lines} == {"canceled"}, lines
        assert all(line["error"]["type"] == "canceled" and Decimal(line["cost_usd"]) == 0 for line in lines)
        # The first batch was canceled at the API (its items had requests); the rest were never sent.
        assert [line["request_id"] is not None for line in lines] == [True] * 3 + [False] * (n - 3)
        assert Decimal(ended["cost"]) == 0
        await assert_ledger_invariants(db)


async def test_without_a_key_the_cli_says_so_and_sends_nothing(jobs_service: Service, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "items.jsonl", mixed_items(2))
    url = str(jobs_service.client.base_url)
    for args in (("submit", "items.jsonl", "--labels", LABELS), ("status", str(uuid.uuid4()))):
        code, out, err = await cascade("jobs", *args, cwd=tmp_path, CASCADE_URL=url)
        assert code == 2, err
        assert out == ""
        assert "an API key is needed: --key or CASCADE_API_KEY" in err
        assert "Traceback" not in err
    assert await api_jobs(jobs_service) == []


async def test_a_wrong_key_is_refused_with_the_services_401(jobs_service: Service, tmp_path: Path) -> None:
    service = jobs_service
    write_jsonl(tmp_path / "items.jsonl", mixed_items(2))
    created = await service.client.post(
        "/v1/jobs", json={"items": mixed_items(2), "labels": SENTIMENT}, headers=service.auth
    )
    job_id = created.json()["id"]
    wrong = ("--url", str(service.client.base_url), "--key", "csk_not_a_key_of_anyone")
    for args in (
        ("status", job_id),
        ("results", job_id),
        ("cancel", job_id),
        ("submit", "items.jsonl", "--labels", LABELS),
    ):
        code, out, err = await cascade("jobs", *args, *wrong, cwd=tmp_path)
        assert code == 1, (args, err)
        assert out == ""
        assert err.strip() == "cascade: 401: invalid or revoked API key", (args, err)
    assert [job["id"] for job in await api_jobs(service)] == [job_id]  # the refused upload made no job
    await wait_for(service, job_id)  # nor was it canceled
    await assert_ledger_invariants(service.db)


async def test_an_unknown_job_is_not_found(jobs_service: Service, tmp_path: Path) -> None:
    service = jobs_service
    missing = str(uuid.uuid4())
    for action in ("status", "results", "cancel", "wait"):
        code, out, err = await cascade("jobs", action, missing, cwd=tmp_path, **as_user(service))
        assert code == 1, (action, err)
        assert out == ""
        assert err.strip() == f"cascade: 404: no job {missing}", (action, err)
    # An id that is not a job id at all is not found either (no route matches it).
    code, out, err = await cascade("jobs", "status", "not-a-job-id", cwd=tmp_path, **as_user(service))
    assert (code, out) == (1, ""), err
    assert err.startswith("cascade: 404: ") and "not found" in err.lower() and "Traceback" not in err, err
    # Another team's job is not found either.
    created = await service.client.post(
        "/v1/jobs", json={"items": mixed_items(2), "labels": SENTIMENT}, headers=service.auth
    )
    job_id = created.json()["id"]
    other = {"CASCADE_URL": str(service.client.base_url), "CASCADE_API_KEY": await service.new_key("team-b")}
    code, out, err = await cascade("jobs", "status", job_id, cwd=tmp_path, **other)
    assert (code, out, err.strip()) == (1, "", f"cascade: 404: no job {job_id}")
    await wait_for(service, job_id)
    await assert_ledger_invariants(service.db)


async def test_a_malformed_jsonl_file_is_refused_naming_its_line(jobs_service: Service, tmp_path: Path) -> None:
    service = jobs_service
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{oops\n')
    (tmp_path / "no_text.jsonl").write_text('{"text": "fine"}\n{"id": "x"}\n')
    code, out, err = await cascade("jobs", "submit", "bad.jsonl", "--labels", LABELS, cwd=tmp_path, **as_user(service))
    assert code == 1 and out == "", err
    assert err.strip() == "cascade: 422: line 4 is not valid JSON", err
    code, out, err = await cascade(
        "jobs", "submit", "no_text.jsonl", "--labels", LABELS, "--no-wait", cwd=tmp_path, **as_user(service)
    )
    assert code == 1 and out == "", err
    assert err.strip() == 'cascade: 422: line 2 must be an object with a string "text"', err
    assert await api_jobs(service) == []
