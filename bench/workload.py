"""What every request of the gateway bench sends: one text the simulator's cheap model is sure of, written as the
service's /v1/classify body, as the Messages API body the service sends upstream for it, and as that body for
LiteLLM."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from litellm_proxy import LITELLM_MODEL  # bench/litellm_proxy.py

from service.cascade.prompt import Task, build_request
from service.core.settings import Settings
from service.money.catalog import Catalog
from service.simulator import behaviour, corpus

LABELS = ("spam", "ham")


def choose_text(settings: Settings, seed: int) -> tuple[str, behaviour.Answer]:
    """A corpus text the simulator's cheap model labels with a confidence well above the threshold, so every
    request makes one upstream call. (A `{{sim:...}}` directive would not do: the simulator applies a directive's
    behaviours to the first calls with that exact text only, then answers as it would without one.)"""
    floor = max(float(settings.threshold) + 0.05, 0.9)
    best: tuple[str, behaviour.Answer] | None = None
    for sample in corpus.SAMPLES:
        if sample.truth not in LABELS:
            continue
        answer = behaviour.classify(seed, settings.cheap_model, sample.text, LABELS)
        if answer.label in LABELS and answer.confidence >= floor:
            return sample.text, answer
        if best is None or answer.confidence > best[1].confidence:
            best = (sample.text, answer)
    if best is None:
        raise SystemExit("no spam/ham text in the simulator's corpus; pass --text")
    return best


@dataclass
class Workload:
    text: str
    service_body: Path
    direct_body: Path
    litellm_body: Path
    expected: str  # what the simulator's cheap model answers for the text


def write_workload(settings: Settings, args: argparse.Namespace, work: Path) -> Workload:
    if args.text:
        chosen = args.text
        answer = behaviour.classify(args.seed, settings.cheap_model, chosen, LABELS)
    else:
        chosen, answer = choose_text(settings, args.seed)
    service_body = work / "classify.json"
    service_body.write_text(json.dumps({"text": chosen, "labels": list(LABELS)}))
    # The very body the service sends upstream for this text (service.cascade.prompt.build_request).
    upstream = build_request(Catalog().model(settings.cheap_model), Task(LABELS), chosen).body
    direct_body = work / "messages.json"
    direct_body.write_text(json.dumps(upstream))
    litellm_body = work / "litellm-messages.json"
    litellm_body.write_text(json.dumps({**upstream, "model": LITELLM_MODEL}))
    expected = (
        f"cheap {settings.cheap_model} answers {answer.label} at {answer.confidence} (threshold {settings.threshold})"
    )
    return Workload(chosen, service_body, direct_body, litellm_body, expected)
