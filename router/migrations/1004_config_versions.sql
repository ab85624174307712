-- Versions of the live configuration, shared by every replica (router/config_store_postgres.py).
-- The document is the canonical JSON (core.config_version.canonical) as text, not
-- jsonb, so that its bytes, and so its hash, read back exactly as written.
-- No row-level security: the configuration is gateway-wide, and only operators'
-- scopes reach it through the admin API.
CREATE TABLE config_versions (
    version    bigint      PRIMARY KEY CHECK (version >= 1),
    hash       text        NOT NULL,
    actor      text        NOT NULL,
    reason     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    document   text        NOT NULL
);

-- Append-only, as audit_log: a rollback is a new version, never an edit of an old one.
CREATE FUNCTION config_versions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'config_versions is append-only';
END
$$;

CREATE TRIGGER config_versions_no_change BEFORE UPDATE OR DELETE ON config_versions
    FOR EACH ROW EXECUTE FUNCTION config_versions_append_only();

CREATE TRIGGER config_versions_no_truncate BEFORE TRUNCATE ON config_versions
    FOR EACH STATEMENT EXECUTE FUNCTION config_versions_append_only();
