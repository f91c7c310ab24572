"""The one settings object, read once at start and passed down."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # An empty variable counts as unset (an empty ANTHROPIC_API_KEY must not pass the "never fakes" check).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True, env_ignore_empty=True)

    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="PostgreSQL URL (postgresql://...). Unset: an embedded PostgreSQL under CASCADE_DATA_DIR.",
    )
    data_dir: Path = Field(
        default=Path(".cascade"),
        validation_alias="CASCADE_DATA_DIR",
        description="Directory for local state: the embedded PostgreSQL cluster lives in <data_dir>/pg.",
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias="ANTHROPIC_API_KEY",
        description="Anthropic API key. `serve` refuses to start without one; `demo` uses the simulator.",
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias="ANTHROPIC_BASE_URL",
        description="Override the Anthropic API base URL (e.g. a simulator at http://127.0.0.1:8900).",
    )
    cheap_model: str = Field(
        default="claude-haiku-4-5-20251001",
        validation_alias="CASCADE_CHEAP_MODEL",
        description="Model asked first. Must be in the catalog and not retired.",
    )
    strong_model: str = Field(
        default="claude-sonnet-5-5",
        validation_alias="CASCADE_STRONG_MODEL",
        description="Model a request escalates to. Sonnet 4.5 retires on 2026-11-30, hence Sonnet 5.5.",
    )
    threshold: Decimal = Field(
        default=Decimal("0.85"),
        ge=0,
        le=1,
        validation_alias="CASCADE_THRESHOLD",
        description="Confidence below which the cheap answer escalates. A request may raise it, never lower it.",
    )
    daily_cap_usd: Decimal = Field(
        default=Decimal("50"),
        ge=0,
        validation_alias="CASCADE_DAILY_CAP_USD",
        description="Global hard cap on upstream spend per UTC day.",
    )
    monthly_cap_usd: Decimal = Field(
        default=Decimal("1000"),
        ge=0,
        validation_alias="CASCADE_MONTHLY_CAP_USD",
        description="Global hard cap on upstream spend per UTC calendar month.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias="CASCADE_ADMIN_KEY",
        description="Key for the admin API. Unset: the admin API is disabled.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        validation_alias="CASCADE_SESSION_SECRET",
        description="Signs dashboard sessions. Unset: a random secret per process, so sessions end at a restart "
        "and do not carry across replicas; set the same value on every replica.",
    )
    session_ttl_s: int = Field(
        default=8 * 3600, ge=60, validation_alias="CASCADE_SESSION_TTL_S", description="Dashboard session lifetime."
    )
    report_concurrency: int = Field(
        default=2,
        ge=1,
        le=32,
        validation_alias="CASCADE_REPORT_CONCURRENCY",
        description="Report queries one process runs at once; more wait, so reports never take the pool that "
        "reservations and settles need.",
    )
    session_cookie_secure: bool = Field(
        default=False,
        validation_alias="CASCADE_SESSION_COOKIE_SECURE",
        description="Mark the dashboard cookie Secure (HTTPS only); set it when TLS terminates in front.",
    )
    max_text_chars: int = Field(
        default=20_000,
        ge=1,
        validation_alias="CASCADE_MAX_TEXT_CHARS",
        description="Longest text accepted for classification, in characters.",
    )
    max_labels: int = Field(
        default=50, ge=2, validation_alias="CASCADE_MAX_LABELS", description="Most labels in one label set."
    )
    max_label_chars: int = Field(
        default=64, ge=1, validation_alias="CASCADE_MAX_LABEL_CHARS", description="Longest label, in characters."
    )
    max_instructions_chars: int = Field(
        default=2_000,
        ge=0,
        validation_alias="CASCADE_MAX_INSTRUCTIONS_CHARS",
        description="Longest caller instructions, in characters.",
    )
    max_body_bytes: int = Field(
        default=256_000,
        ge=1024,
        validation_alias="CASCADE_MAX_BODY_BYTES",
        description="Largest request body accepted; larger bodies get 413.",
    )
    max_batch_items: int = Field(
        default=1000, ge=1, validation_alias="CASCADE_MAX_BATCH_ITEMS", description="Most items in one batch call."
    )
    max_batch_body_bytes: int = Field(
        default=8_000_000,
        ge=1024,
        validation_alias="CASCADE_MAX_BATCH_BODY_BYTES",
        description="Largest body of POST /v1/classify/batch (413 past it).",
    )
    batch_concurrency: int = Field(
        default=8,
        ge=1,
        validation_alias="CASCADE_BATCH_CONCURRENCY",
        description="Items of one batch call classified at once.",
    )
    max_task_examples: int = Field(
        default=50,
        ge=0,
        validation_alias="CASCADE_MAX_TASK_EXAMPLES",
        description="Most few-shot examples in a named task.",
    )
    max_task_prompt_chars: int = Field(
        default=400_000,
        ge=1000,
        validation_alias="CASCADE_MAX_TASK_PROMPT_CHARS",
        description="Longest prompt prefix (instructions, labels and examples) of a named task, in characters.",
    )
    shadow_concurrency: int = Field(
        default=8,
        ge=1,
        validation_alias="CASCADE_SHADOW_CONCURRENCY",
        description="Shadow calibration calls one process makes at once; past it a sampled shadow is skipped "
        '(counted in cascade_shadow_requests_total{result="skipped"}).',
    )
    cache_ttl_s: float = Field(
        default=86_400.0,
        ge=0,
        validation_alias="CASCADE_CACHE_TTL_S",
        description="How long an answer is kept in the exact-match response cache; 0 turns the cache off.",
    )
    max_job_items: int = Field(
        default=1_000_000, ge=1, validation_alias="CASCADE_MAX_JOB_ITEMS", description="Most items in one job."
    )
    max_job_body_bytes: int = Field(
        default=512_000_000,
        ge=1024,
        validation_alias="CASCADE_MAX_JOB_BODY_BYTES",
        description="Largest JSONL upload to POST /v1/jobs/jsonl (413 past it).",
    )
    max_job_inline_bytes: int = Field(
        default=64_000_000,
        ge=1024,
        validation_alias="CASCADE_MAX_JOB_INLINE_BYTES",
        description="Largest inline JSON body of POST /v1/jobs (413 past it); it is parsed whole in memory, so "
        "larger jobs are uploaded as JSONL, which is read a line at a time.",
    )
    run_worker: bool = Field(
        default=False,
        validation_alias="CASCADE_RUN_WORKER",
        description="Run the job worker inside `cascade serve` as well (one per process); `cascade worker` runs "
        "it alone.",
    )
    job_poll_s: float = Field(
        default=5.0,
        gt=0,
        validation_alias="CASCADE_JOB_POLL_S",
        description="How often the worker looks for due jobs, and rechecks a job waiting on Message Batches.",
    )
    job_lease_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias="CASCADE_JOB_LEASE_S",
        description="How long a worker's claim on a job lasts without renewal; a dead worker's jobs are taken "
        "over after it.",
    )
    job_submit_timeout_s: float = Field(
        default=120.0,
        gt=0,
        validation_alias="CASCADE_JOB_SUBMIT_TIMEOUT_S",
        description="Timeout of one Message Batch creation. A batch whose creation did not answer is in doubt "
        "for this plus the lease before it is looked for at the API.",
    )
    job_batch_items: int = Field(
        default=10_000,
        ge=1,
        le=10_000,
        validation_alias="CASCADE_JOB_BATCH_ITEMS",
        description="Most requests in one Message Batch.",
    )
    job_batch_bytes: int = Field(
        default=200_000_000,
        ge=1_000_000,
        le=256_000_000,
        validation_alias="CASCADE_JOB_BATCH_BYTES",
        description="Most bytes of one Message Batch's requests, as sent (the API takes up to 256 MB); a batch of "
        "long texts holds fewer items.",
    )
    job_item_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        validation_alias="CASCADE_JOB_ITEM_ATTEMPTS",
        description="Most times an item is sent at one stage: a request that expired or errored transiently is "
        "sent again in a later batch, up to this; then the cheap stage escalates it and the strong stage fails it.",
    )
    job_doubt_s: float = Field(
        default=600.0,
        gt=0,
        validation_alias="CASCADE_JOB_DOUBT_S",
        description="How long after a batch was held, by the database's clock, a worker waits for its creation "
        "to be confirmed before it looks for it at the API (and releases it if absent). Must exceed "
        "CASCADE_JOB_LEASE_S + CASCADE_JOB_SUBMIT_TIMEOUT_S.",
    )
    job_open_batches: int = Field(
        default=20,
        ge=1,
        validation_alias="CASCADE_JOB_OPEN_BATCHES",
        description="Most Message Batches one job has in progress at once (each holds its worst case on the caps).",
    )
    job_pause_recheck_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias="CASCADE_JOB_PAUSE_RECHECK_S",
        description="How often a job paused on a cost cap tries again.",
    )
    worker_failpoint: str | None = Field(
        default=None,
        validation_alias="CASCADE_WORKER_FAILPOINT",
        description="Testing only: the worker exits at once (as if killed) the first time it reaches this point "
        "(after_hold, after_create, after_submitted, mid_ingest).",
    )
    request_deadline_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias="CASCADE_REQUEST_DEADLINE_S",
        description="Deadline for one classification, retries and escalation included.",
    )
    attempt_timeout_s: float = Field(
        default=10.0,
        gt=0,
        validation_alias="CASCADE_ATTEMPT_TIMEOUT_S",
        description="Timeout of one upstream call (also bounded by what is left of the deadline).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=4,
        validation_alias="CASCADE_MAX_ATTEMPTS",
        description="Upstream attempts per model per request, the first included.",
    )
    retry_base_s: float = Field(
        default=0.25, gt=0, validation_alias="CASCADE_RETRY_BASE_S", description="Base of the full-jitter backoff."
    )
    retry_cap_s: float = Field(
        default=4.0, gt=0, validation_alias="CASCADE_RETRY_CAP_S", description="Cap of one backoff sleep."
    )
    reservation_ttl_s: float = Field(
        default=300.0,
        gt=0,
        validation_alias="CASCADE_RESERVATION_TTL_S",
        description="Age after which the sweeper charges a held reservation at its worst case. "
        "Must exceed the request deadline and the attempt timeout.",
    )
    sweep_interval_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias="CASCADE_SWEEP_INTERVAL_S",
        description="How often each replica runs the reservation sweeper.",
    )
    upstream_pool_size: int = Field(
        default=100,
        ge=1,
        validation_alias="CASCADE_UPSTREAM_POOL_SIZE",
        description="Most concurrent connections to the Anthropic API per process.",
    )
    team_rate_per_s: float = Field(
        default=100.0,
        gt=0,
        validation_alias="CASCADE_TEAM_RATE_PER_S",
        description="Classify requests per second each team may send to one process (429 past it).",
    )
    team_burst: int = Field(
        default=200,
        ge=1,
        validation_alias="CASCADE_TEAM_BURST",
        description="Requests a team may send at once before its rate applies.",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        validation_alias="CASCADE_SHUTDOWN_GRACE_S",
        description="On SIGTERM, how long in-flight requests may take to finish before they are cancelled "
        "(a cancelled attempt is still settled, at its reservation).",
    )
    log_level: str = Field(
        default="INFO",
        pattern="^(DEBUG|INFO|WARNING|ERROR)$",
        validation_alias="CASCADE_LOG_LEVEL",
        description="Level of the JSON logs of `cascade serve` (probe and scrape lines are DEBUG).",
    )
    log_text: bool = Field(
        default=False,
        validation_alias="CASCADE_LOG_TEXT",
        description="Debugging only: put the classified text in the access line. Keys are never logged.",
    )
    money_concurrency: int = Field(
        default=4,
        ge=1,
        validation_alias="CASCADE_MONEY_CONCURRENCY",
        description="Reserve and settle statements one process runs at once (they all lock the global cap rows; "
        "more at once only queue inside PostgreSQL). Keep it at or below CASCADE_DB_POOL_SIZE.",
    )
    db_pool_size: int = Field(
        default=10, ge=1, validation_alias="CASCADE_DB_POOL_SIZE", description="SQLAlchemy pool size per process."
    )
    db_max_overflow: int = Field(
        default=20,
        ge=0,
        validation_alias="CASCADE_DB_MAX_OVERFLOW",
        description="Extra DB connections allowed beyond the pool under bursts.",
    )
    db_timeout_s: float = Field(
        default=5.0,
        gt=0,
        validation_alias="CASCADE_DB_TIMEOUT_S",
        description="Connect and pool-checkout timeout; past it a request fails closed with 503.",
    )

    def model_post_init(self, __context: object) -> None:
        # A reservation lives as long as its call: at most the request deadline, and a shadow call (which has no
        # request deadline) at most the attempt timeout. The sweeper must never charge one whose holder is alive.
        if self.reservation_ttl_s <= max(self.request_deadline_s, self.attempt_timeout_s):
            raise ValueError(
                "CASCADE_RESERVATION_TTL_S must be longer than CASCADE_REQUEST_DEADLINE_S and CASCADE_ATTEMPT_TIMEOUT_S"
            )
        if self.job_doubt_s <= self.job_lease_s + self.job_submit_timeout_s:
            raise ValueError(
                "CASCADE_JOB_DOUBT_S must be longer than CASCADE_JOB_LEASE_S + CASCADE_JOB_SUBMIT_TIMEOUT_S"
            )
