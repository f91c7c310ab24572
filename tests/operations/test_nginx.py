"""deploy/nginx.conf holds what production relies on: the lb in front of the replicas, its limits and retries.

Parsed, not run: no nginx is needed. Checked against docker-compose.yml and the service's Settings defaults.
"""

from __future__ import annotations

from typing import Any

from tests.operations.deployment import SERVE, nginx_config, one, seconds, service, setting


def test_nginx_proxies_to_the_cascade_service_on_its_port(compose: dict[str, Any]) -> None:
    conf = nginx_config()
    target = one(conf.location("/"), "proxy_pass")[0]
    assert target.startswith("http://")
    upstream = conf.upstream(target.removeprefix("http://"))
    port = SERVE[SERVE.index("--port") + 1]
    servers = [d.args for d in upstream.block or [] if d.name == "server"]
    assert servers, "the upstream has no server"
    assert "cascade" in compose["services"]  # the Compose service name, which Docker's DNS resolves
    assert all(s[0] == f"cascade:{port}" for s in servers), servers
    if any("resolve" in s for s in servers):  # re-resolving needs a zone and a resolver (Docker's DNS)
        one(upstream, "zone")
        assert conf.root.all("resolver"), "`resolve` without a resolver"
    assert one(upstream, "keepalive")
    assert one(conf.virtual_server(), "proxy_http_version") == ["1.1"]
    for path in PROXIED:
        assert one(conf.location(path), "proxy_pass") == [target], path


PROXIED = ("/", "/v1/classify/batch", "/v1/jobs")


def test_nginx_waits_longer_than_the_service_deadline(compose: dict[str, Any]) -> None:
    deadline = setting(service(compose, "cascade"), "request_deadline_s")
    for path in PROXIED:
        assert seconds(one(nginx_config().location(path), "proxy_read_timeout")[0]) > deadline, path


def byte_size(limit: str) -> float:
    return float(limit[:-1]) * {"k": 1024, "m": 1024**2}[limit[-1].lower()] if limit[-1].isalpha() else float(limit)


def test_nginx_takes_every_body_the_service_takes(compose: dict[str, Any]) -> None:
    conf, cascade = nginx_config(), service(compose, "cascade")
    size = byte_size(one(conf.virtual_server(), "client_max_body_size")[0])
    assert size >= setting(cascade, "max_body_bytes")
    assert size <= 1024**2, "the outer bound stays small"
    batch = byte_size(one(conf.location("/v1/classify/batch"), "client_max_body_size")[0])
    assert setting(cascade, "max_batch_body_bytes") <= batch <= 16 * 1024**2
    jobs = conf.location("/v1/jobs")
    limit = byte_size(one(jobs, "client_max_body_size")[0])
    assert limit >= max(setting(cascade, "max_job_body_bytes"), setting(cascade, "max_job_inline_bytes"))
    assert one(jobs, "proxy_request_buffering") == ["off"], "an upload streams to the replica, not to nginx's disk"


def test_nginx_never_retries_a_request_that_may_have_spent_money() -> None:
    conf = nginx_config()
    retry_on = one(conf.virtual_server(), "proxy_next_upstream")
    assert "non_idempotent" not in retry_on, "a POST /v1/classify sent twice may be paid for twice"
    assert set(retry_on) <= {"error", "timeout"}, retry_on
    for path in PROXIED:  # inherited by every location: none may set its own
        assert not [d for d in conf.location(path).block or [] if d.name == "proxy_next_upstream"], path


def test_nginx_passes_the_request_id_back_and_answers_its_own_health() -> None:
    conf = nginx_config()
    for name in ("proxy_hide_header", "more_clear_headers", "add_header"):
        for directive in conf.root.all(name):
            assert "x-request-id" not in " ".join(directive.args).lower()
    health = conf.location("/nginx-health")
    assert one(health, "return")[0] == "200"
    server = conf.virtual_server()
    hosts = [d.args for d in server.block or [] if d.name == "proxy_set_header" and d.args[0].lower() == "host"]
    assert hosts == [["Host", "$http_host"]], "the dashboard's login compares Origin with Host, port included"
    for path in PROXIED:  # a location with any proxy_set_header of its own would inherit none of these
        assert not [d for d in conf.location(path).block or [] if d.name == "proxy_set_header"], path
