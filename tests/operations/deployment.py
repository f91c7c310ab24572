"""The deployment files that production relies on, and how their tests read them.

Where the Dockerfile, docker-compose.yml, deploy/nginx.conf and .dockerignore are; the command the image serves
with; a compose service's environment, command and effective settings; nginx.conf parsed into its directives.
Parsed, not built: no Docker engine is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "deploy" / "nginx.conf"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVE = ["cascade", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]


# ---- docker-compose.yml -------------------------------------------------------------------------------------------


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"docker-compose.yml has no service {name!r}"
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def environment(svc: dict[str, Any]) -> dict[str, str | None]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # the list form: KEY=value, or KEY alone to pass it through
        return {k: (v if sep else None) for k, sep, v in (item.partition("=") for item in env)}
    return {k: None if v is None else str(v) for k, v in env.items()}


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    return cmd.split() if isinstance(cmd, str) else list(cmd or [])


def seconds(duration: str | int | float) -> float:
    """A Compose (Go) or nginx duration: 40s, 1m30s, 500ms, 60 (seconds)."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", duration.strip())
    assert parts and "".join(n + u for n, u in parts) == duration.strip(), f"not a duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def setting(svc: dict[str, Any], field_name: str) -> float:
    """The value the service will run with: the compose file's, else the Settings default."""
    model_field = Settings.model_fields[field_name]
    value = environment(svc).get(str(model_field.validation_alias))
    return float(model_field.default if value is None else value)


# ---- deploy/nginx.conf --------------------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        found = [d for d in self.block or [] if d.name == name]
        for child in self.block or []:
            found += child.all(name)
        return found


@dataclass
class NginxConfig:
    root: Directive

    def upstream(self, name: str) -> Directive:
        found = [d for d in self.root.all("upstream") if d.args == [name]]
        assert len(found) == 1, f"no upstream {name!r}"
        return found[0]

    def location(self, path: str) -> Directive:
        found = [d for d in self.root.all("location") if d.args[-1] == path]
        assert found, f"no location {path}"
        return found[0]

    def virtual_server(self) -> Directive:
        servers = [d for d in self.root.all("server") if d.block is not None]  # not an upstream's `server`
        assert len(servers) == 1, "one server block"
        return servers[0]


def parse_nginx(text: str) -> NginxConfig:
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[{};]|[^\s{};]+', re.sub(r"#[^\n]*", "", text))
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            block: list[Directive] = []
            stack[-1].append(Directive(words[0], words[1:], block))
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token.strip("\"'"))
    assert len(stack) == 1 and not words, "unbalanced braces in nginx.conf"
    return NginxConfig(Directive("main", [], stack[0]))


def nginx_config() -> NginxConfig:
    return parse_nginx(NGINX.read_text())


def one(block: Directive, name: str) -> list[str]:
    found = [d.args for d in block.block or [] if d.name == name]
    assert len(found) == 1, f"{block.name} {block.args}: expected one {name}, found {found}"
    return found[0]
