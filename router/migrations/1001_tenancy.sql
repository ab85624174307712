-- Tenants, their API keys and the append-only audit log of every change.
-- Numbered from 1001 so that, in the shared schema_migrations table, no tenancy
-- version equals a ledger version (see router/migrate.py).
-- Keys are stored only as keyed hashes (HMAC-SHA256 with the deployment's pepper).
CREATE TABLE tenants (
    id         text        PRIMARY KEY,
    name       text        NOT NULL DEFAULT '',
    disabled   boolean     NOT NULL DEFAULT false,
    priority   text        NOT NULL DEFAULT 'standard',
    weight     integer     NOT NULL DEFAULT 1 CHECK (weight >= 1),
    limits     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    budgets    jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Key ids are unique across tenants, as in the config file: requests and ledger
-- rows name a key by its id alone.
CREATE TABLE api_keys (
    id         text        PRIMARY KEY,
    tenant_id  text        NOT NULL REFERENCES tenants (id),
    hash       text        NOT NULL UNIQUE,
    scopes     text[]      NOT NULL DEFAULT '{}',
    expires_at timestamptz,
    revoked_at timestamptz,
    priority   text,
    limits     jsonb,
    budgets    jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE audit_log (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text        NOT NULL,
    action    text        NOT NULL,
    tenant_id text,
    target    text        NOT NULL,
    old_value jsonb,
    new_value jsonb
);

CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);

-- Append-only, enforced by the database: rows can be added, never changed or removed.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
