-- Batches of the Batch API kept in PostgreSQL (`state.batches: postgres`;
-- router/batch_store_postgres.py), shared by every replica.
--
-- `batches`: one row per batch, the record (the Batch object, its tenant and
-- creating key) as JSON bytes, exactly as the embedded store writes its file;
-- `status` and `created_ns` beside it for the runner's look at unfinished
-- batches and for listing newest first. `claimed_by` / `claim_expires` are the
-- lease of the replica running the batch (router/batch_claims.py,
-- PostgresClaims): taken when free or lapsed, by the database's clock.
--
-- `batch_parts`: the result lines a batch writes as its requests finish, one
-- row per append, read back in `seq` order and deleted once the batch's output
-- and error files are written.
--
-- Both are tenant-scoped under row-level security (the convention of
-- core/pg_scope.py, policy_sql(table, 'tenant')). The runner's look at every
-- unfinished batch and its claims run under '*'. The gateway's role needs
-- SELECT, INSERT, UPDATE, DELETE on both tables and USAGE on
-- batch_parts_seq_seq.
CREATE TABLE batches (
    tenant        text        NOT NULL,
    id            text        NOT NULL,
    created_ns    bigint      NOT NULL,
    status        text        NOT NULL,
    record        bytea       NOT NULL,
    claimed_by    text,
    claim_expires timestamptz,
    PRIMARY KEY (tenant, id)
);

CREATE INDEX batches_listing ON batches (tenant, created_ns DESC, id DESC);
CREATE UNIQUE INDEX batches_id ON batches (id);
CREATE INDEX batches_unfinished ON batches (id) WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

ALTER TABLE batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE batches FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON batches USING (current_setting('sluicegate.tenant', true) IN ('*', tenant)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant));

CREATE TABLE batch_parts (
    seq      bigserial PRIMARY KEY,
    tenant   text      NOT NULL,
    batch_id text      NOT NULL,
    part     text      NOT NULL CHECK (part IN ('output', 'error')),
    lines    bytea     NOT NULL
);

CREATE INDEX batch_parts_batch ON batch_parts (tenant, batch_id, part, seq);

ALTER TABLE batch_parts ENABLE ROW LEVEL SECURITY;
ALTER TABLE batch_parts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON batch_parts USING (current_setting('sluicegate.tenant', true) IN ('*', tenant)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant));
