"""Reading a Messages API request body the way the simulator needs it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from service.simulator import behaviour, corpus

SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k")


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ParsedRequest:
    model: str
    text: str  # the text to classify, directives included
    labels: tuple[str, ...]
    structured: bool  # whether output_config asked for JSON
    max_tokens: int  # 0 for count_tokens
    thinking_disabled: bool
    prompt_bytes: int
    # Prompt caching: the system prompt up to its block marked with cache_control, and the TTL asked for.
    cache_prefix: str | None = None
    cache_ttl: str | None = None

    @property
    def input_tokens(self) -> int:
        return behaviour.input_tokens(self.model, self.prompt_bytes)

    @property
    def prefix_tokens(self) -> int:
        """The marked prefix's share of input_tokens (0 when nothing is marked)."""
        if self.cache_prefix is None:
            return 0
        return min(behaviour.prefix_tokens(self.model, len(self.cache_prefix.encode())), self.input_tokens)


def load(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "Request body must be a JSON object")
    return payload


def _block_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            block["text"]
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
    return ""


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def text_to_classify(payload: dict[str, Any]) -> str:
    """The last user message, or the part between its first <text> and last </text> when present."""
    messages = payload.get("messages")
    user = (
        [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if isinstance(messages, list) else []
    )
    if not user:
        return ""
    content = _block_text(user[-1].get("content"))
    start, end = content.find("<text>"), content.rfind("</text>")
    if start >= 0 and end > start:
        content = content[start + len("<text>") : end]
    return content.strip()


def prompt_bytes(payload: dict[str, Any]) -> int:
    parts = [_block_text(payload.get("system"))]
    for message in payload.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts.append(_block_text(content))
        if isinstance(content, list):
            # Non-text blocks (images, documents) still cost tokens: count their JSON.
            parts += [_dumps(b) for b in content if not (isinstance(b, dict) and b.get("type") == "text")]
    if "output_config" in payload:
        parts.append(_dumps(payload["output_config"]))
    return sum(len(part.encode()) for part in parts)


def _schema_labels(output_config: object) -> tuple[str, ...] | None:
    try:
        enum = output_config["format"]["schema"]["properties"]["label"]["enum"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    if isinstance(enum, list) and enum and all(isinstance(label, str) for label in enum):
        return tuple(enum)
    return None


def _guess_labels(payload: dict[str, Any], text: str) -> tuple[str, ...]:
    # Without a schema, fall back to the sample's own label set, then to a set the prompt names in full.
    sample = corpus.sample_for(text)
    if sample is not None:
        return tuple(corpus.LABEL_SETS[sample.task])
    prompt = (_block_text(payload.get("system")) + " " + _all_message_text(payload)).lower()
    words = set(re.findall(r"[a-z_]+", prompt))
    for labels in corpus.LABEL_SETS.values():
        if all(label in words for label in labels):
            return tuple(labels)
    return tuple(corpus.LABEL_SETS["sentiment"])


def _all_message_text(payload: dict[str, Any]) -> str:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return ""
    return " ".join(_block_text(m.get("content")) for m in messages if isinstance(m, dict))


def parse(payload: dict[str, Any], *, count_only: bool = False) -> ParsedRequest:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model: Field required")
    if model not in behaviour.KNOWN_MODELS:
        raise RequestError(404, f"model: {model}")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages: Field required")
    max_tokens = payload.get("max_tokens", 0 if count_only else None)
    if not count_only and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise RequestError(400, "max_tokens: Field required (a positive integer)")
    for name in SAMPLING_PARAMETERS:
        if name in payload:
            raise RequestError(400, f"{name}: Extra inputs are not permitted (anthropic-version 2026-10-21)")
    if payload.get("stream"):
        raise RequestError(400, "stream: the simulator does not stream")
    thinking = payload.get("thinking")
    text = text_to_classify(payload)
    output_config = payload.get("output_config")
    labels = _schema_labels(output_config)
    prefix, ttl = _cache_marker(payload.get("system"))
    return ParsedRequest(
        model=model,
        text=text,
        labels=labels or _guess_labels(payload, text),
        structured=isinstance(output_config, dict) and "format" in output_config,
        max_tokens=max_tokens if isinstance(max_tokens, int) else 0,
        thinking_disabled=isinstance(thinking, dict) and thinking.get("type") == "disabled",
        prompt_bytes=prompt_bytes(payload),
        cache_prefix=prefix,
        cache_ttl=ttl,
    )


def _cache_marker(system: object) -> tuple[str | None, str | None]:
    """The system blocks up to the last one with `cache_control`, and its TTL (5m unless it says 1h)."""
    if not isinstance(system, list):
        return None, None
    prefix: list[str] = []
    marked, ttl = None, None
    for block in system:
        if not isinstance(block, dict):
            continue
        text = block.get("text")
        prefix.append(text if isinstance(text, str) else "")
        control = block.get("cache_control")
        if control is None:
            continue
        if not isinstance(control, dict) or control.get("type") != "ephemeral":
            raise RequestError(400, 'system.cache_control: only {"type": "ephemeral"} is supported')
        ttl = control.get("ttl", "5m")
        if ttl not in ("5m", "1h"):
            raise RequestError(400, "system.cache_control.ttl: must be 5m or 1h")
        marked = "\n".join(prefix)
    return marked, ttl if marked is not None else None
