-- Row-level security on the ledger (the convention of core/pg_scope.py, whose
-- policy_sql('ledger', 'tenant') gives the first three statements): a
-- transaction sees and writes only the rows of the tenant named by its
-- `sluicegate.tenant` setting, every row under '*', and nothing while the
-- setting is unset. FORCE binds the owner too. The writer's batches mix
-- tenants and run under '*'; a tenant's report runs under that tenant.
ALTER TABLE ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ledger USING (current_setting('sluicegate.tenant', true) IN ('*', tenant)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant));

-- The parent's policy binds every query made through `ledger`, but each monthly
-- partition is a table of its own that can be named directly: each carries the
-- same policy.
CREATE FUNCTION ledger_secure_partition(part regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    tenant_check constant text := $c$current_setting('sluicegate.tenant', true) IN ('*', tenant)$c$;
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', part);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', part);
    IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = part AND polname = 'tenant_isolation') THEN
        EXECUTE format('CREATE POLICY tenant_isolation ON %s USING (%s) WITH CHECK (%s)', part, tenant_check, tenant_check);
    END IF;
END
$$;

DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'ledger'::regclass LOOP
        PERFORM ledger_secure_partition(part);
    END LOOP;
END
$$;

-- The writer adds a month's partition through this function. Only the owner of
-- `ledger` may add a partition, so it runs as the owner (SECURITY DEFINER) and
-- the gateway's ordinary role needs EXECUTE on it, nothing more. The advisory
-- lock serialises replicas creating the same month; bounds are UTC midnights.
CREATE FUNCTION ledger_partition(year integer, month integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part_name constant text := format('ledger_y%sm%s', to_char(year, 'FM0000'), to_char(month, 'FM00'));
    -- Written out as ISO text, so no session setting (TimeZone, DateStyle) changes them.
    lower_bound constant text := format('%s-%s-01 00:00:00+00', to_char(year, 'FM0000'), to_char(month, 'FM00'));
    upper_bound constant text := format('%s-%s-01 00:00:00+00', to_char(year + month / 12, 'FM0000'), to_char(month % 12 + 1, 'FM00'));
BEGIN
    IF month NOT BETWEEN 1 AND 12 THEN
        RAISE EXCEPTION 'month % is not between 1 and 12', month;
    END IF;
    PERFORM pg_advisory_xact_lock(5840153867467096066);
    IF to_regclass(part_name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF ledger FOR VALUES FROM (%L) TO (%L)', part_name, lower_bound, upper_bound);
        PERFORM ledger_secure_partition(part_name::regclass);
    END IF;
END
$$;

REVOKE ALL ON FUNCTION ledger_secure_partition(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION ledger_partition(integer, integer) FROM PUBLIC;
