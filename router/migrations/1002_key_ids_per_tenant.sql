-- Key ids are unique within their tenant, not across tenants: refusing an id
-- that another tenant holds would reveal it, and would let a tenant take ids
-- another has not used yet. A key is named by (tenant_id, id) everywhere; the
-- ledger's rows carry both. Nothing references api_keys by its id.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_pkey;
ALTER TABLE api_keys ADD PRIMARY KEY (tenant_id, id);
-- The new primary key leads with tenant_id and serves its lookups.
DROP INDEX api_keys_tenant;
