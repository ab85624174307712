-- The semantic cache's vector index (router.semantic_index_pg). Its own
-- namespace (`semantic_cache`), applied by the index itself on first use and
-- never by `sluicegate db migrate`: it needs the pgvector extension, which a
-- gateway without a semantic cache must not require.
--
-- `embedding` has no fixed dimension: each embedding model has its own, and a
-- search compares only rows of its scope, partition and `dims`. There is no
-- approximate (HNSW) index, which needs a fixed dimension: a search is exact,
-- over one scope's entries of one partition, found by the b-tree below.
--
-- No row-level security: the table holds vectors and cache keys (digests),
-- never a prompt or an answer, and only the gateway's own code reads it, with
-- the scope always in the WHERE clause.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE semantic_cache_index (
    key        text             PRIMARY KEY,
    scope      text             NOT NULL,
    partition  text             NOT NULL,
    dims       integer          NOT NULL,
    embedding  vector           NOT NULL,
    -- Epoch seconds.
    expires_at double precision NOT NULL
);

CREATE INDEX semantic_cache_index_search ON semantic_cache_index (scope, partition, dims);
CREATE INDEX semantic_cache_index_expiry ON semantic_cache_index (expires_at);
