-- Each ledger row names the live config version its request ran on and, during
-- a canary, the arm that served it ('stable', 'candidate', 'shadow'; NULL
-- outside a canary). Added on the partitioned parent, so every monthly
-- partition, existing or made later by ledger_partition(), has them. Rows
-- written before this migration (and by replicas not yet upgraded, which name
-- their columns) read as version 0 outside any canary. A constant default
-- changes only the catalog: no partition is rewritten.
ALTER TABLE ledger
    ADD COLUMN config_version integer NOT NULL DEFAULT 0,
    ADD COLUMN arm            text;
