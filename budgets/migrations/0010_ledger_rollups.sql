-- The ledger's rollups: per UTC hour (ledger_hourly) and per UTC day
-- (ledger_daily), per tenant, alias (`model`), deployment, provider and
-- status, the sums a usage report reads (budgets/ledger_usage.py), so that a
-- month's report reads a few rows per day instead of every request.
--
-- Kept by statement triggers on `ledger`, in the transaction that changes it:
-- an insert adds the sums of the rows it actually inserted (the NEW TABLE of
-- an INSERT ... ON CONFLICT DO NOTHING holds no skipped duplicate, so a
-- replayed spool adds nothing twice), a DELETE subtracts the rows it removed,
-- and TRUNCATE ledger empties the rollups. Every writer keeps them, older
-- replicas during a rolling upgrade included. Concurrent writers meet on the
-- same rollup rows: `x = x + excluded.x` under the row lock is exact, and each
-- statement upserts in key order, so two batches cannot deadlock on them.
-- Dropping or detaching a monthly partition bypasses the triggers: run
-- `SELECT ledger_rollup_rebuild(from, to)` over its range afterwards.
--
-- The trigger functions run as the owner (SECURITY DEFINER), so the
-- gateway's role needs no write grant here; for reports it needs SELECT on
-- both tables (without it, reports read the raw rows). Row-level security as
-- on the ledger (core/pg_scope.py, policy_sql(table, 'tenant')).
--
-- The rollups are filled from the rows already in the ledger while the ledger
-- is locked against writes (SHARE ROW EXCLUSIVE, as CREATE TRIGGER takes):
-- writers wait (or spool, past their deadline) for as long as that takes.
CREATE TABLE ledger_hourly (
    hour              timestamptz NOT NULL,  -- the hour's start (UTC)
    tenant            text        NOT NULL,
    model             text        NOT NULL,
    deployment        text        NOT NULL,
    provider          text        NOT NULL,
    status            integer     NOT NULL,
    requests          bigint      NOT NULL,
    errors            bigint      NOT NULL,  -- status >= 400
    prompt_tokens     bigint      NOT NULL,
    completion_tokens bigint      NOT NULL,
    cached_tokens     bigint      NOT NULL,
    cost              bigint      NOT NULL,  -- pico-USD
    cache_hits        bigint      NOT NULL,
    saved             bigint      NOT NULL,  -- pico-USD
    PRIMARY KEY (hour, tenant, model, deployment, provider, status)
);

CREATE TABLE ledger_daily (LIKE ledger_hourly INCLUDING ALL);
ALTER TABLE ledger_daily RENAME COLUMN hour TO day;  -- the UTC day's start

ALTER TABLE ledger_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_hourly FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ledger_hourly USING (current_setting('sluicegate.tenant', true) IN ('*', tenant)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant));
ALTER TABLE ledger_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ledger_daily USING (current_setting('sluicegate.tenant', true) IN ('*', tenant)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant));

-- Each trigger adds (or takes off) the sums of the rows a statement inserted
-- (or deleted) per rollup key, hourly and daily; a key whose requests reach 0
-- is removed.
CREATE FUNCTION ledger_rollup_added() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO ledger_hourly AS r
    SELECT date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', tenant, model, deployment, provider, status,
           count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens),
           sum(cached_tokens), sum(cost), count(*) FILTER (WHERE cache = 'hit'), sum(saved)
    FROM added GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (hour, tenant, model, deployment, provider, status) DO UPDATE SET
        requests = r.requests + excluded.requests, errors = r.errors + excluded.errors,
        prompt_tokens = r.prompt_tokens + excluded.prompt_tokens, completion_tokens = r.completion_tokens + excluded.completion_tokens,
        cached_tokens = r.cached_tokens + excluded.cached_tokens, cost = r.cost + excluded.cost,
        cache_hits = r.cache_hits + excluded.cache_hits, saved = r.saved + excluded.saved;
    INSERT INTO ledger_daily AS r
    SELECT date_trunc('day', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', tenant, model, deployment, provider, status,
           count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens),
           sum(cached_tokens), sum(cost), count(*) FILTER (WHERE cache = 'hit'), sum(saved)
    FROM added GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (day, tenant, model, deployment, provider, status) DO UPDATE SET
        requests = r.requests + excluded.requests, errors = r.errors + excluded.errors,
        prompt_tokens = r.prompt_tokens + excluded.prompt_tokens, completion_tokens = r.completion_tokens + excluded.completion_tokens,
        cached_tokens = r.cached_tokens + excluded.cached_tokens, cost = r.cost + excluded.cost,
        cache_hits = r.cache_hits + excluded.cache_hits, saved = r.saved + excluded.saved;
    RETURN NULL;
END
$$;

CREATE FUNCTION ledger_rollup_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE ledger_hourly AS r SET
        requests = r.requests - s.requests, errors = r.errors - s.errors,
        prompt_tokens = r.prompt_tokens - s.prompt_tokens, completion_tokens = r.completion_tokens - s.completion_tokens,
        cached_tokens = r.cached_tokens - s.cached_tokens, cost = r.cost - s.cost,
        cache_hits = r.cache_hits - s.cache_hits, saved = r.saved - s.saved
    FROM (
        SELECT date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', tenant, model, deployment, provider, status,
               count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens),
               sum(cached_tokens), sum(cost), count(*) FILTER (WHERE cache = 'hit'), sum(saved)
        FROM removed GROUP BY 1, 2, 3, 4, 5, 6
    ) AS s (bucket, tenant, model, deployment, provider, status, requests, errors, prompt_tokens, completion_tokens, cached_tokens, cost, cache_hits, saved)
    WHERE (r.hour, r.tenant, r.model, r.deployment, r.provider, r.status) = (s.bucket, s.tenant, s.model, s.deployment, s.provider, s.status);
    DELETE FROM ledger_hourly
    WHERE requests = 0 AND hour IN (SELECT DISTINCT date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM removed);
    UPDATE ledger_daily AS r SET
        requests = r.requests - s.requests, errors = r.errors - s.errors,
        prompt_tokens = r.prompt_tokens - s.prompt_tokens, completion_tokens = r.completion_tokens - s.completion_tokens,
        cached_tokens = r.cached_tokens - s.cached_tokens, cost = r.cost - s.cost,
        cache_hits = r.cache_hits - s.cache_hits, saved = r.saved - s.saved
    FROM (
        SELECT date_trunc('day', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', tenant, model, deployment, provider, status,
               count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens),
               sum(cached_tokens), sum(cost), count(*) FILTER (WHERE cache = 'hit'), sum(saved)
        FROM removed GROUP BY 1, 2, 3, 4, 5, 6
    ) AS s (bucket, tenant, model, deployment, provider, status, requests, errors, prompt_tokens, completion_tokens, cached_tokens, cost, cache_hits, saved)
    WHERE (r.day, r.tenant, r.model, r.deployment, r.provider, r.status) = (s.bucket, s.tenant, s.model, s.deployment, s.provider, s.status);
    DELETE FROM ledger_daily
    WHERE requests = 0 AND day IN (SELECT DISTINCT date_trunc('day', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM removed);
    RETURN NULL;
END
$$;

CREATE FUNCTION ledger_rollup_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    TRUNCATE ledger_hourly, ledger_daily;
    RETURN NULL;
END
$$;

-- Recomputes both rollups for the UTC days that start in [from_day, to_day)
-- from the ledger's rows (bounds are rounded down to the day); for the owner,
-- after a partition was dropped or detached. Reads and writes every tenant's rows.
CREATE FUNCTION ledger_rollup_rebuild(from_day timestamptz, to_day timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT SET sluicegate.tenant = '*' AS $$
DECLARE
    lower_bound constant timestamptz := date_trunc('day', from_day AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    upper_bound constant timestamptz := date_trunc('day', to_day AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    LOCK TABLE ledger IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM ledger_hourly WHERE hour >= lower_bound AND hour < upper_bound;
    DELETE FROM ledger_daily WHERE day >= lower_bound AND day < upper_bound;
    INSERT INTO ledger_hourly
    SELECT date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', tenant, model, deployment, provider, status,
           count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens),
           sum(cached_tokens), sum(cost), count(*) FILTER (WHERE cache = 'hit'), sum(saved)
    FROM ledger WHERE started_at >= lower_bound AND started_at < upper_bound GROUP BY 1, 2, 3, 4, 5, 6;
    INSERT INTO ledger_daily
    SELECT date_trunc('day', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', tenant, model, deployment, provider, status,
           count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens),
           sum(cached_tokens), sum(cost), count(*) FILTER (WHERE cache = 'hit'), sum(saved)
    FROM ledger WHERE started_at >= lower_bound AND started_at < upper_bound GROUP BY 1, 2, 3, 4, 5, 6;
END
$$;

REVOKE ALL ON FUNCTION ledger_rollup_added() FROM PUBLIC;
REVOKE ALL ON FUNCTION ledger_rollup_removed() FROM PUBLIC;
REVOKE ALL ON FUNCTION ledger_rollup_truncated() FROM PUBLIC;
REVOKE ALL ON FUNCTION ledger_rollup_rebuild(timestamptz, timestamptz) FROM PUBLIC;

LOCK TABLE ledger IN SHARE ROW EXCLUSIVE MODE;
CREATE TRIGGER ledger_rollup_insert AFTER INSERT ON ledger REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rollup_added();
CREATE TRIGGER ledger_rollup_delete AFTER DELETE ON ledger REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rollup_removed();
CREATE TRIGGER ledger_rollup_truncate AFTER TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rollup_truncated();
SELECT ledger_rollup_rebuild('-infinity', 'infinity');
