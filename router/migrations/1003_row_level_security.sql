-- Row-level security on the tenancy tables (the convention of core/pg_scope.py,
-- whose policy_sql() gives these statements): a transaction sees and writes only
-- the rows of the tenant named by its `sluicegate.tenant` setting, every row
-- under '*', and nothing while the setting is unset. FORCE binds the owner too.
-- Audit rows without a tenant are operators' own: visible only under '*'.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (current_setting('sluicegate.tenant', true) IN ('*', id)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', id));
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys USING (current_setting('sluicegate.tenant', true) IN ('*', tenant_id)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant_id));
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log USING (current_setting('sluicegate.tenant', true) IN ('*', tenant_id)) WITH CHECK (current_setting('sluicegate.tenant', true) IN ('*', tenant_id));
