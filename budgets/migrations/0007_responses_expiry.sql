-- Stored responses expire `state.responses_retention_days` after `created_at`
-- (router/responses_store_postgres.py). Reads skip expired rows by their
-- primary key; the expiry sweep deletes the oldest expired rows of every
-- tenant in small batches (`WHERE created_at <= cutoff ORDER BY created_at
-- LIMIT n`, under the '*' scope of core/pg_scope.py), which this index serves
-- without scanning the table. Built inside the migration's transaction: the
-- table's writes wait while it is built (brief unless the table is large;
-- for a large table, create it CONCURRENTLY by hand first: IF NOT EXISTS then
-- skips it here).
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
