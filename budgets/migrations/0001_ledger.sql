-- The cost ledger: one row per request, append-only.
-- Partitioned by month on started_at; partitions are created on demand by the
-- writer (budgets/ledger_postgres.py), so none is created here.
-- The primary key includes the partition key, as PostgreSQL requires, and is
-- what makes replayed batches idempotent (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE ledger (
    request_id        text             NOT NULL,
    started_at        timestamptz      NOT NULL,
    finished_at       timestamptz      NOT NULL,
    tenant            text             NOT NULL,
    key_id            text             NOT NULL,
    model             text             NOT NULL,
    deployment        text             NOT NULL,
    provider          text             NOT NULL,
    prompt_tokens     bigint           NOT NULL,
    completion_tokens bigint           NOT NULL,
    cached_tokens     bigint           NOT NULL,
    cost              bigint           NOT NULL,  -- pico-USD (1e-12 USD)
    latency_ms        double precision NOT NULL,
    ttft_ms           double precision,
    status            integer          NOT NULL,
    error             text,
    route_reason      text,
    pii_entities      jsonb            NOT NULL DEFAULT '{}'::jsonb,
    trace_id          text,
    stream            boolean          NOT NULL,
    PRIMARY KEY (request_id, started_at)
) PARTITION BY RANGE (started_at);

CREATE INDEX ledger_tenant_started ON ledger (tenant, started_at);
