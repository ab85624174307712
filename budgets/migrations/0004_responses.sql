-- Responses stored by the Responses API (`store: true`; router/responses_store_postgres.py):
-- the Response object as retrieved, the request's input items, and the whole
-- conversation up to its output, which `previous_response_id` continues. A
-- response belongs to one tenant: every query names it, and row-level
-- security (the convention of core/pg_scope.py, policy_sql('responses',
-- 'tenant')) shows a transaction only the rows of the tenant it is bound to.
-- The JSON is kept as bytes (bytea), exactly as the client got it: nothing
-- queries inside it, and jsonb would refuse a \u0000 a client may send.
-- The gateway's role needs SELECT, INSERT and DELETE on it.
CREATE TABLE responses (
    tenant       text        NOT NULL,
    id           text        NOT NULL,
    created_at   timestamptz NOT NULL,
    response     bytea       NOT NULL,
    input_items  bytea       NOT NULL,
    conversation bytea       NOT NULL,
    PRIMARY KEY (tenant, id)
);

ALTER TABLE responses ENABLE ROW LEVEL SECURITY;
ALTER TABLE responses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON responses USING (current_setting('sluicegate.tenant', true) IN ('*', tenant)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant));
