# syntax=docker/dockerfile:1
# The cascade image: `cascade serve` by default; `cascade migrate` and `cascade simulator` run from the same image.
# docker-compose.yml builds it; docs/DEPLOY.md has the production path.
# ---- build: the locked dependencies and the project, in /app/.venv ----------------------------------------------
FROM python:3.12-slim AS build
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-cache
COPY service ./service
COPY migrations ./migrations
COPY alembic.ini README.md ./
# The project stays an editable install (the default): `cascade migrate` finds the migrations next to the
# `service` package (service/core/schema.py), which a --no-editable install into site-packages would leave behind.
RUN uv sync --frozen --no-dev --no-cache \
 && python -m compileall -q service

# ---- runtime: the venv and the code, run by an unprivileged user ------------------------------------------------
FROM python:3.12-slim AS runtime
RUN groupadd --system --gid 10001 cascade \
 && useradd --system --uid 10001 --gid cascade --home-dir /var/lib/cascade --create-home \
      --shell /usr/sbin/nologin cascade
WORKDIR /app
# Owned by root, read-only to the service's user. Same paths as in the build: the venv's scripts point at them.
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/service /app/service
COPY --from=build /app/migrations /app/migrations
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CASCADE_DATA_DIR=/var/lib/cascade
# Numeric, so that a runtime that checks "runs as non-root" (Kubernetes runAsNonRoot) can verify it.
USER 10001:10001
EXPOSE 8000
# Ready = the process answers and its database does (GET /health/ready is 503 when the database is down).
# The slim image has no curl: Python's urllib, no proxy, a 3 s timeout; any error or non-200 exits 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/health/ready', timeout=3); sys.exit(0 if r.status == 200 else 1)"]
# DATABASE_URL, ANTHROPIC_API_KEY and the other settings come from the environment (docs/DEPLOY.md);
# run `cascade migrate` once per release, before the new replicas start. On SIGTERM the service stops accepting
# and lets in-flight requests finish within CASCADE_SHUTDOWN_GRACE_S.
CMD ["cascade", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
