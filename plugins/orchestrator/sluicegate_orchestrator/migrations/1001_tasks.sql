-- The orchestrator's tasks and their steps (sluicegate_orchestrator/store_postgres.py),
-- recorded in schema_migrations under the namespace `orchestrator`.
--
-- `tasks`: one row per task. `input`, `result` and `failed_children` are JSON
-- bytes; times are seconds since the epoch from the workers' clock (leases and
-- retry times are compared with it, never with the database's). An
-- idempotency key is unique per tenant.
--
-- `task_steps`: a task's named steps: the memoised result once `done` (a
-- redelivered task does not run it again), `compensated` once its saga undid
-- it, and the failures counted while `pending` (the retry policy's per-step
-- attempts).
--
-- Both are tenant-scoped under row-level security (core/pg_scope.py,
-- policy_sql(table, 'tenant')); workers bind each call to the task's tenant,
-- replay and the dead list run under '*'. The gateway's role needs SELECT,
-- INSERT, UPDATE on both tables.
CREATE TABLE tasks (
    id               text             PRIMARY KEY,
    tenant           text             NOT NULL,
    kind             text             NOT NULL,
    queue            text             NOT NULL,
    input            bytea            NOT NULL,
    status           text             NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'dead')),
    attempts         integer          NOT NULL,
    max_attempts     integer          NOT NULL,
    trace_id         text             NOT NULL,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    idempotency_key  text,
    parent_id        text,
    result           bytea,
    error            text,
    cancel_requested boolean          NOT NULL,
    not_before       double precision,
    lease_owner      text,
    lease_until      double precision,
    failed_children  bytea            NOT NULL,
    finished_at      double precision
);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_listing ON tasks (tenant, created_at DESC, id DESC);
CREATE INDEX tasks_children ON tasks (tenant, parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_trace ON tasks (trace_id);

ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tasks USING (current_setting('sluicegate.tenant', true) IN ('*', tenant)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant));

CREATE TABLE task_steps (
    tenant     text             NOT NULL,
    task_id    text             NOT NULL,
    name       text             NOT NULL,
    state      text             NOT NULL CHECK (state IN ('pending', 'done', 'compensated')),
    result     bytea,
    failures   integer          NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (tenant, task_id, name)
);

ALTER TABLE task_steps ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_steps FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON task_steps USING (current_setting('sluicegate.tenant', true) IN ('*', tenant)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant));
