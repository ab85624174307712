-- Each ledger row names the guardrail that blocked its request or cut its
-- stream short (its name in the config, never what it matched); NULL when
-- none did. Added on the partitioned parent, so every monthly partition has
-- it; a nullable column without a default changes only the catalog: no
-- partition is rewritten. Rows written before this migration read as none.
ALTER TABLE ledger
    ADD COLUMN guardrail text;
