"""`cascade simulator`: run the Anthropic-compatible simulator on a port, or print its bundled labelled texts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from service.core.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser("simulator", help="run the Anthropic-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--latency-ms", type=float, default=0.0)
    sim.add_argument("--batch-processing-s", type=float, default=0.0, help="how long a Message Batch stays in progress")
    sim.add_argument("--batch-expire-rate", type=float, default=0.0, help="share of batch requests that expire")
    sim.add_argument(
        "--workload",
        choices=["sentiment", "support_intent", "moderation"],
        help="print the bundled labelled texts of one label set as JSONL ({text, label}) and exit",
    )
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="random fault rate, e.g. --fault 529=0.05 (repeatable)",
    )
    sim.set_defaults(handler=_simulator)


def _simulator(settings: Settings, args: argparse.Namespace) -> None:
    from service.simulator import SimulatorConfig, serve_forever
    from service.simulator.corpus import SAMPLES

    if args.workload:
        for sample in SAMPLES:
            if sample.task == args.workload:
                print(json.dumps({"text": sample.text, "label": sample.truth}, ensure_ascii=False))
        return

    rates = {}
    for item in args.fault:
        kind, _, rate = item.partition("=")
        rates[kind] = float(rate)
    config = SimulatorConfig(
        seed=args.seed,
        latency_ms=args.latency_ms,
        fault_rates=rates,
        batch_processing_s=args.batch_processing_s,
        batch_expire_rate=args.batch_expire_rate,
    )
    print(f"Anthropic simulator on http://{args.host}:{args.port} (simulated answers, not Claude's)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, args.host, args.port))
