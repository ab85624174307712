-- Each ledger row says what the response cache did for its request ('hit',
-- 'miss', 'bypass'; NULL when the alias has no cache), which entry a hit
-- replayed or a miss stored (a prefix of the key's digest, revealing nothing),
-- and on a hit what the stored answer had cost: what the hit saved, in
-- pico-USD. Added on the partitioned parent, so every monthly partition has
-- them; a constant default changes only the catalog: no partition is
-- rewritten. Rows written before this migration read as no cache.
ALTER TABLE ledger
    ADD COLUMN cache       text,
    ADD COLUMN cache_entry text,
    ADD COLUMN saved       bigint NOT NULL DEFAULT 0;
