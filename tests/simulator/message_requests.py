"""The Messages API requests that the simulator's tests send through the real SDK, and how they read the answers."""

from __future__ import annotations

import json
from typing import Any

import anthropic
from anthropic.types import Message, TextBlock

from service.simulator.corpus import LABEL_SETS, TASK_INSTRUCTIONS

HAIKU = "claude-haiku-4-5-20251001"
HAIKU_55 = "claude-haiku-5-5"
SONNET = "claude-sonnet-4-6"
SONNET_55 = "claude-sonnet-5-5"
SENTIMENT = LABEL_SETS["sentiment"]
SYSTEM = "You are a careful text classifier. Answer with the label and your confidence between 0 and 1."


def output_config(labels: list[str]) -> dict[str, Any]:
    return {
        "format": {
            "type": "json_schema",
            "schema": {
                "type": "object",
                "properties": {"label": {"type": "string", "enum": labels}, "confidence": {"type": "number"}},
                "required": ["label", "confidence"],
                "additionalProperties": False,
            },
        }
    }


def user_content(text: str, task: str = "sentiment") -> str:
    return f"{TASK_INSTRUCTIONS[task]}\n\n<text>\n{text}\n</text>"


def request(text: str, *, model: str = HAIKU, labels: list[str] = SENTIMENT, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 64,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": user_content(text)}],
        "output_config": output_config(labels),
    }
    return body | extra


def answer(message: Message) -> dict[str, Any]:
    texts = [block.text for block in message.content if isinstance(block, TextBlock)]
    assert len(texts) == 1
    parsed: dict[str, Any] = json.loads(texts[0])
    return parsed


def text_of(message: Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


async def create(client: anthropic.AsyncAnthropic, text: str, **kwargs: Any) -> Message:
    raw = await client.messages.with_raw_response.create(**request(text, **kwargs))
    # The SDK constructs models without validating them; validate the wire body strictly as well.
    Message.model_validate(json.loads(await raw.read()))
    message = await raw.parse()
    assert isinstance(message, Message)
    return message
