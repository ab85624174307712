-- Each ledger row names the /v1/batches batch its request ran in (billed at
-- the deployment's batch price); NULL for interactive requests and for rows
-- written before this migration. Added on the partitioned parent, so every
-- monthly partition has it; a column without a default changes only the
-- catalog: no partition is rewritten.
ALTER TABLE ledger
    ADD COLUMN batch_id text;
