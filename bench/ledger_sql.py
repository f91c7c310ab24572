"""The set-based SQL that seeds the reports bench's ledger: staging tables of requests and attempts, the cap rows
and their ids, the inserts into `requests` and `attempts` in time order, and the consistency check run after;
and DAYS, the span of the ledger they seed, which the timed reports cover too.

Every statement reads the staging schema `bench_seed` that bench/ledger_seed.py fills and drops."""

DAYS = 30  # the days the ledger spans; REQUESTS_STAGING spells it as interval '30 days'

# Per request: independent draws first (materialized, so each random() is evaluated once), then the scenario.
# Scenario shares (of all requests): 1% refused by a cap before any attempt; the rest go to the cheap model,
# 4.5% of them after one or two failed attempts, and about 25% escalate (low confidence 21%, invalid 2%,
# refused 0.7%, truncated 0.8%, cheap model unavailable after 3 attempts 0.5%). Of the escalated, 1.8% need a
# second strong attempt, 0.8% find the strong model unavailable and 0.4% get no usable strong answer: failed.
REQUESTS_STAGING = """
CREATE UNLOGGED TABLE bench_seed.req AS
WITH draws AS MATERIALIZED (
    SELECT g AS n, random() AS r_team, random() AS r_task, random() AS r_time, random() AS r_model,
        random() AS r_text, random() AS r_path, random() AS r_cretry, random() AS r_strong, random() AS r_conf,
        random() AS r_sconf, random() AS r_clabel, random() AS r_slabel, random() AS r_changed, random() AS r_lat
    FROM generate_series(1, CAST(:n AS int)) AS g
),
shaped AS MATERIALIZED (
    SELECT d.*,
        CASE WHEN r_team < 0.5 THEN 1 WHEN r_team < 0.8 THEN 2 ELSE 3 END AS team_no,
        1 + least(floor(power(r_task, 1.8) * CAST(:ntasks AS int))::int, CAST(:ntasks AS int) - 1) AS task_no,
        CAST(:now AS timestamptz) - r_time * interval '30 days' AS created_at,
        CASE WHEN r_model < CAST(:canary_share AS float8) THEN CAST(:canary_model AS text)
            ELSE CAST(:cheap_model AS text) END AS cheap_model,
        80 + floor(power(r_text, 2.5) * 6000)::int AS text_chars,
        CASE
            WHEN r_path < 0.010 THEN 'cap_refused'
            WHEN r_path < 0.015 THEN 'cheap_unavailable'
            WHEN r_path < 0.035 THEN 'invalid_answer'
            WHEN r_path < 0.042 THEN 'refused'
            WHEN r_path < 0.050 THEN 'truncated'
            WHEN r_path < 0.260 THEN 'low_confidence'
            ELSE 'confident'
        END AS path,
        CASE WHEN r_cretry < 0.040 THEN 1 WHEN r_cretry < 0.045 THEN 2 ELSE 0 END AS cheap_retries,
        CASE
            WHEN r_strong < 0.008 THEN 'unavailable'
            WHEN r_strong < 0.012 THEN 'defect'
            WHEN r_strong < 0.030 THEN 'retried'
            ELSE 'answered'
        END AS strong_path
    FROM draws d
),
decided AS MATERIALIZED (
    SELECT s.*, t.task_hash, t.labels, t.instructions, t.nlabels, t.threshold, t.max_tokens,
        s.path NOT IN ('cap_refused', 'confident') AS escalated,
        s.path IN ('low_confidence', 'confident') AS cheap_answered,
        CASE s.path WHEN 'cap_refused' THEN 0 WHEN 'cheap_unavailable' THEN 3 ELSE s.cheap_retries END
            AS n_cheap_fail,
        s.path NOT IN ('cap_refused', 'cheap_unavailable') AS cheap_final,
        CASE
            WHEN s.path IN ('cap_refused', 'confident') THEN 0
            WHEN s.strong_path = 'unavailable' THEN 3
            WHEN s.strong_path = 'retried' THEN 1
            ELSE 0
        END AS n_strong_fail,
        s.path NOT IN ('cap_refused', 'confident') AND s.strong_path <> 'unavailable' AS strong_final,
        s.path NOT IN ('cap_refused', 'confident') AND s.strong_path IN ('answered', 'retried') AS strong_ok,
        t.labels ->> floor(s.r_clabel * t.nlabels)::int AS c_label,
        CASE s.path
            WHEN 'confident' THEN round((t.threshold + (1 - t.threshold) * s.r_conf::numeric), 6)
            WHEN 'low_confidence' THEN least(round(t.threshold * (0.35 + 0.65 * s.r_conf::numeric), 6),
                t.threshold - 0.000001)
        END AS c_confidence,
        round((0.6 + 0.4 * s.r_sconf)::numeric, 6) AS s_confidence
    FROM shaped s JOIN bench_seed.tasks t USING (task_no)
)
SELECT d.n, gen_random_uuid() AS id, tm.id AS team_id, d.created_at, d.task_no, d.task_hash, d.labels,
    d.instructions, d.threshold, d.text_chars, d.cheap_model, CAST(:strong_model AS text) AS strong_model,
    d.max_tokens, d.path, d.strong_path, d.escalated,
    CASE WHEN d.escalated THEN d.path END AS escalation_reason,
    d.n_cheap_fail + d.cheap_final::int AS n_cheap,
    d.n_strong_fail + d.strong_final::int AS n_strong,
    d.cheap_final, d.strong_final,
    CASE WHEN d.path = 'cap_refused' THEN 'refused' WHEN d.escalated AND NOT d.strong_ok THEN 'failed' ELSE 'ok' END
        AS status,
    CASE WHEN d.cheap_answered THEN d.c_label END AS cheap_label,
    d.c_confidence AS cheap_confidence,
    CASE WHEN d.cheap_answered AND d.r_changed >= 0.3 THEN d.c_label
        ELSE d.labels ->> floor(d.r_slabel * d.nlabels)::int END AS strong_label,
    d.s_confidence AS strong_confidence,
    CASE
        WHEN d.path = 'cap_refused' THEN 2 + floor(d.r_lat * 5)::int
        ELSE (d.n_cheap_fail + d.cheap_final::int) * (350 + floor(d.r_lat * 800)::int)
            + (d.n_strong_fail + d.strong_final::int) * (900 + floor(d.r_lat * 2500)::int)
            + (d.n_cheap_fail + d.n_strong_fail) * 300
    END AS latency_ms
FROM decided d JOIN bench_seed.teams tm USING (team_no)
"""

# Per attempt: the slots of each request in order (failed cheap attempts, the cheap answer, failed strong
# attempts, the strong answer), their outcome and usage, and the cost at the price row of the billing day.
ATTEMPTS_STAGING = """
CREATE UNLOGGED TABLE bench_seed.att AS
WITH slots AS MATERIALIZED (
    SELECT r.n, r.id AS request_id, r.team_id, r.created_at AS request_created_at, r.task_no, r.task_hash,
        r.text_chars, r.max_tokens, r.path, r.strong_path, r.escalation_reason, r.cheap_label, r.cheap_confidence,
        r.strong_label, r.strong_confidence, a AS attempt_no,
        a <= r.n_cheap AS is_cheap,
        CASE WHEN a <= r.n_cheap THEN r.cheap_model ELSE r.strong_model END AS model,
        CASE WHEN a <= r.n_cheap THEN a = r.n_cheap AND r.cheap_final
            ELSE a = r.n_cheap + r.n_strong AND r.strong_final END AS is_final,
        r.created_at + ((a - 1) * 900 + 2) * interval '1 millisecond' AS reserved_at,
        random() AS r_kind, random() AS r_in, random() AS r_out, random() AS r_lat
    FROM bench_seed.req r CROSS JOIN LATERAL generate_series(1, r.n_cheap + r.n_strong) AS a
),
outcomes AS (
    SELECT s.*,
        (s.reserved_at AT TIME ZONE 'UTC')::date AS billing_day,
        sh.bound_base + s.text_chars AS input_token_bound,
        CASE
            WHEN s.is_final AND s.is_cheap THEN
                CASE WHEN s.path IN ('invalid_answer', 'refused', 'truncated') THEN s.path ELSE 'answered' END
            WHEN s.is_final THEN CASE s.strong_path WHEN 'defect' THEN 'invalid_answer' ELSE 'answered' END
            WHEN s.r_kind < 0.60 THEN 'overloaded'
            WHEN s.r_kind < 0.85 THEN 'server_error'
            WHEN s.r_kind < 0.95 THEN 'rate_limited'
            ELSE 'timeout'
        END AS outcome
    FROM slots s JOIN bench_seed.shapes sh ON sh.task_no = s.task_no AND sh.model = s.model
),
usage AS (
    SELECT o.*,
        CASE WHEN o.outcome = 'timeout' THEN NULL
            WHEN o.is_final THEN floor((o.input_token_bound - 512) * (0.26 + 0.04 * o.r_in))::int + 3
            ELSE 0 END AS input_tokens,
        CASE WHEN o.outcome = 'timeout' THEN NULL ELSE 0 END AS cache_tokens,
        CASE WHEN o.outcome = 'timeout' THEN NULL
            WHEN NOT o.is_final THEN 0
            WHEN o.outcome = 'truncated' THEN o.max_tokens
            WHEN o.outcome = 'answered' THEN 12 + floor(o.r_out * 10)::int
            ELSE 15 + floor(o.r_out * 25)::int END AS output_tokens
    FROM outcomes o
)
SELECT u.n, u.request_id, u.team_id, u.request_created_at, u.task_hash, u.attempt_no,
    CASE WHEN u.is_cheap THEN 'cheap' ELSE 'strong' END AS stage, u.model, u.billing_day, u.input_token_bound,
    u.max_tokens, p.price_id, p.p_in, p.p_cw5m, p.p_cw1h, p.p_cr, p.p_out, u.outcome,
    CASE u.outcome WHEN 'overloaded' THEN 529 WHEN 'server_error' THEN 500 WHEN 'rate_limited' THEN 429
        WHEN 'timeout' THEN NULL ELSE 200 END AS http_status,
    CASE u.outcome WHEN 'answered' THEN 'end_turn' WHEN 'invalid_answer' THEN 'end_turn' WHEN 'refused' THEN 'refusal'
        WHEN 'truncated' THEN 'max_tokens' END AS stop_reason,
    CASE WHEN u.outcome <> 'answered' THEN NULL WHEN u.is_cheap THEN u.cheap_label ELSE u.strong_label END AS label,
    CASE WHEN u.outcome <> 'answered' THEN NULL WHEN u.is_cheap THEN u.cheap_confidence ELSE u.strong_confidence END
        AS confidence,
    CASE WHEN u.is_final AND u.is_cheap THEN u.escalation_reason END AS escalation_reason,
    u.input_tokens, u.cache_tokens AS cache_write_5m_tokens, u.cache_tokens AS cache_write_1h_tokens,
    u.cache_tokens AS cache_read_tokens, u.output_tokens,
    round((u.input_token_bound * p.p_in + u.max_tokens * p.p_out) / 1000000, 10) AS reserved_usd,
    round(CASE WHEN u.input_tokens IS NULL THEN (u.input_token_bound * p.p_in + u.max_tokens * p.p_out) / 1000000
        ELSE (u.input_tokens * p.p_in + u.cache_tokens * p.p_cw5m + u.cache_tokens * p.p_cw1h
            + u.cache_tokens * p.p_cr + u.output_tokens * p.p_out) / 1000000 END, 10) AS cost_usd,
    round(CASE WHEN NOT u.is_cheap THEN NULL
        WHEN u.input_tokens IS NULL THEN (u.input_token_bound * sp.p_in + u.max_tokens * sp.p_out) / 1000000
        ELSE (u.input_tokens * sp.p_in + u.cache_tokens * sp.p_cw5m + u.cache_tokens * sp.p_cw1h
            + u.cache_tokens * sp.p_cr + u.output_tokens * sp.p_out) / 1000000 END, 10) AS strong_equiv_usd,
    CASE WHEN u.outcome <> 'timeout' THEN 'req_bench_' || left(md5(u.request_id::text || u.attempt_no), 20) END
        AS upstream_request_id,
    CASE
        WHEN u.outcome = 'timeout' THEN 10000
        WHEN NOT u.is_final THEN 40 + floor(u.r_lat * 300)::int
        WHEN u.is_cheap THEN 300 + floor(u.r_lat * 900)::int
        ELSE 800 + floor(u.r_lat * 2500)::int
    END AS latency_ms,
    CASE u.outcome
        WHEN 'overloaded' THEN 'Overloaded'
        WHEN 'server_error' THEN 'Internal server error'
        WHEN 'rate_limited' THEN 'Number of request tokens has exceeded your per-minute rate limit'
        WHEN 'timeout' THEN 'no answer within 10.0s'
        WHEN 'invalid_answer' THEN 'the answer is not valid JSON'
        WHEN 'refused' THEN 'the model refused to classify the text'
        WHEN 'truncated' THEN 'the answer was cut off (max_tokens)'
    END AS error_message,
    u.reserved_at
FROM usage u
JOIN bench_seed.prices p ON p.model = u.model AND p.day = u.billing_day
JOIN bench_seed.prices sp ON sp.model = CAST(:strong_model AS text) AND sp.day = u.billing_day
"""

# Cap rows as the budget keeps them (global day and month, team day and month), charged with what was spent.
CAPS = """
INSERT INTO caps (scope, team_id, period, period_start, cap_usd, spent_usd, reserved_usd, overrun_usd, updated_at)
SELECT 'global', CAST(NULL AS uuid), 'day', billing_day, greatest(CAST(:daily AS numeric), sum(spent)),
    sum(spent), 0, 0, CAST(:now AS timestamptz)
FROM bench_seed.spend GROUP BY billing_day
UNION ALL
SELECT 'global', CAST(NULL AS uuid), 'month', date_trunc('month', billing_day)::date,
    greatest(CAST(:monthly AS numeric), sum(spent)), sum(spent), 0, 0, CAST(:now AS timestamptz)
FROM bench_seed.spend GROUP BY date_trunc('month', billing_day)::date
UNION ALL
SELECT 'team', team_id, 'day', billing_day, CAST(:uncapped AS numeric), sum(spent), 0, 0, CAST(:now AS timestamptz)
FROM bench_seed.spend GROUP BY team_id, billing_day
UNION ALL
SELECT 'team', team_id, 'month', date_trunc('month', billing_day)::date, CAST(:uncapped AS numeric), sum(spent),
    0, 0, CAST(:now AS timestamptz)
FROM bench_seed.spend GROUP BY team_id, date_trunc('month', billing_day)::date
"""

CAP_SETS = """
CREATE UNLOGGED TABLE bench_seed.capset AS
SELECT s.billing_day, s.team_id, ARRAY[gd.id, gm.id, td.id, tm.id] AS cap_ids
FROM bench_seed.spend s
JOIN caps gd ON gd.scope = 'global' AND gd.period = 'day' AND gd.period_start = s.billing_day
JOIN caps gm ON gm.scope = 'global' AND gm.period = 'month'
    AND gm.period_start = date_trunc('month', s.billing_day)::date
JOIN caps td ON td.scope = 'team' AND td.team_id = s.team_id AND td.period = 'day' AND td.period_start = s.billing_day
JOIN caps tm ON tm.scope = 'team' AND tm.team_id = s.team_id AND tm.period = 'month'
    AND tm.period_start = date_trunc('month', s.billing_day)::date
"""

# Physically in created_at order, as a live service appends them.
REQUESTS_INSERT = """
INSERT INTO requests (id, team_id, status, task_hash, labels, instructions, threshold, text_chars, cheap_model,
    strong_model, label, confidence, model, escalated, escalation_reason, cheap_label, cheap_confidence, cost_usd,
    all_strong_cost_usd, error_type, error_message, latency_ms, created_at, finished_at)
SELECT r.id, r.team_id, r.status, r.task_hash, r.labels, r.instructions, r.threshold, r.text_chars, r.cheap_model,
    r.strong_model,
    CASE WHEN r.status <> 'ok' THEN NULL WHEN r.escalated THEN r.strong_label ELSE r.cheap_label END,
    CASE WHEN r.status <> 'ok' THEN NULL WHEN r.escalated THEN r.strong_confidence ELSE r.cheap_confidence END,
    CASE WHEN r.status <> 'ok' THEN NULL WHEN r.escalated THEN r.strong_model ELSE r.cheap_model END,
    r.escalated, r.escalation_reason, r.cheap_label, r.cheap_confidence,
    coalesce(c.cost_usd, 0), coalesce(c.strong_equiv_usd, 0),
    CASE
        WHEN r.status = 'refused' THEN 'cost_cap_exceeded'
        WHEN r.status = 'failed' AND r.strong_path = 'unavailable' THEN 'upstream_unavailable'
        WHEN r.status = 'failed' THEN 'upstream_error'
    END,
    CASE
        WHEN r.status = 'refused' THEN 'the team daily cost cap would be exceeded: $0 remains and this attempt may '
            || 'cost up to $0.0123'
        WHEN r.status = 'failed' AND r.strong_path = 'unavailable' THEN 'the strong model is unavailable: Overloaded'
        WHEN r.status = 'failed' THEN 'the strong model gave no usable answer: the answer is not valid JSON'
    END,
    r.latency_ms, r.created_at, r.created_at + r.latency_ms * interval '1 millisecond'
FROM bench_seed.req r
LEFT JOIN (
    SELECT n, sum(cost_usd) AS cost_usd, sum(strong_equiv_usd) FILTER (WHERE stage = 'cheap') AS strong_equiv_usd
    FROM bench_seed.att GROUP BY n
) c USING (n)
ORDER BY r.created_at
"""

ATTEMPTS_INSERT = """
INSERT INTO attempts (request_id, team_id, request_created_at, task_hash, attempt_no, stage, model, state, cap_ids,
    billing_day, reserved_usd, input_token_bound, max_tokens, price_id, price_input, price_cache_write_5m,
    price_cache_write_1h, price_cache_read, price_output, outcome, http_status, stop_reason, label, confidence,
    escalation_reason, input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, output_tokens,
    cost_usd, strong_equiv_usd, upstream_request_id, latency_ms, error_message, settled_by, reserved_at, settled_at)
SELECT a.request_id, a.team_id, a.request_created_at, a.task_hash, a.attempt_no, a.stage, a.model, 'settled',
    cs.cap_ids, a.billing_day, a.reserved_usd, a.input_token_bound, a.max_tokens, a.price_id, a.p_in, a.p_cw5m,
    a.p_cw1h, a.p_cr, a.p_out, a.outcome, a.http_status, a.stop_reason, a.label, a.confidence, a.escalation_reason,
    a.input_tokens, a.cache_write_5m_tokens, a.cache_write_1h_tokens, a.cache_read_tokens, a.output_tokens,
    a.cost_usd, a.strong_equiv_usd, a.upstream_request_id, a.latency_ms, a.error_message, 'holder', a.reserved_at,
    a.reserved_at + a.latency_ms * interval '1 millisecond'
FROM bench_seed.att a JOIN bench_seed.capset cs ON cs.billing_day = a.billing_day AND cs.team_id = a.team_id
ORDER BY a.reserved_at, a.attempt_no
"""

# Every request's cost is the sum of its attempts' costs, and its all-strong cost that of its cheap attempts'
# strong equivalents: the rows that break either rule (0 expected).
CONSISTENCY = """
SELECT count(*) FROM requests r
LEFT JOIN (
    SELECT request_id, sum(cost_usd) AS cost_usd,
        coalesce(sum(strong_equiv_usd) FILTER (WHERE stage = 'cheap'), 0) AS strong_equiv_usd
    FROM attempts GROUP BY request_id
) a ON a.request_id = r.id
WHERE r.cost_usd <> coalesce(a.cost_usd, 0) OR r.all_strong_cost_usd <> coalesce(a.strong_equiv_usd, 0)
"""
