# syntax=docker/dockerfile:1
FROM python:3.12-slim AS build
RUN pip install --no-cache-dir uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY service ./service
COPY migrations ./migrations
COPY alembic.ini README.md ./
RUN uv sync --frozen --no-dev

FROM python:3.12-slim
RUN useradd --create-home --uid 10001 cascade
WORKDIR /app
COPY --from=build --chown=cascade:cascade /app /app
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1
USER cascade
EXPOSE 8000
# DATABASE_URL and ANTHROPIC_API_KEY come from the environment; run `cascade migrate` once per release.
CMD ["cascade", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
