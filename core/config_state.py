"""Where shared state lives, and the Files and Batches limits: start-time sections of the config.

Read once at start (``core.config.START_TIME_KEYS``); changing them needs a restart.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from core.config_base import ConfigError, PositiveFloat, PositiveInt, SecretRef
from core.config_base import Strict as _Strict
from core.config_cache import CacheStoreConfig


class S3Config(_Strict):
    """An S3-compatible object store (AWS S3, MinIO, Ceph, R2) for ``state.files: s3``."""

    bucket: Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{1,254})?$")] = ""
    # None: AWS's own endpoint for `region`.
    endpoint_url: str | None = None
    region: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[a-z0-9-]+$")] = "us-east-1"
    access_key_id: SecretRef | str | None = None
    secret_access_key: SecretRef | None = None
    # Temporary credentials (STS) come with a session token.
    session_token: SecretRef | None = None
    # Every key starts with this (e.g. "sluicegate/"), so that one bucket may serve several gateways.
    prefix: Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[A-Za-z0-9._/-]*$")] = ""
    # https://endpoint/bucket/key (MinIO and most self-hosted servers) rather than https://bucket.endpoint/key.
    path_style: bool = False
    # Files larger than this go up as a multipart upload in parts of this size (S3's smallest part is 5 MiB).
    part_bytes: Annotated[int, msgspec.Meta(ge=5 * 1024 * 1024, le=1024 * 1024 * 1024)] = 8 * 1024 * 1024
    # Deadline of connecting, and of each wait for the server's next bytes.
    timeout_s: PositiveFloat = 30.0

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("https://", "http://")):
            raise ValueError("`endpoint_url` must be an https:// or http:// URL")

    def access_key(self) -> str | None:
        if isinstance(self.access_key_id, SecretRef):
            return self.access_key_id.resolve()
        return self.access_key_id


class StateConfig(_Strict):
    """Where shared state lives. The defaults are embedded: tenants and keys from this file."""

    tenants: Literal["config", "postgres"] = "config"
    postgres_dsn: SecretRef | str | None = None
    # Set, replicas tell each other about revoked keys and changed tenants at once.
    # A URL with a password belongs in a secret reference ({env: NAME} or {file: PATH}).
    redis_url: SecretRef | str | None = None
    # Rate limits, concurrency and budgets: in this process, or shared in Redis.
    counters: Literal["memory", "redis"] = "memory"
    # `redis_url` names a node of a Redis Cluster: counters are sharded by tenant over its shards.
    counters_cluster: bool = False
    # The cost ledger: a local SQLite file, or PostgreSQL (batched, spooled when down).
    ledger: Literal["sqlite", "postgres", "off"] = "sqlite"
    ledger_path: str = "sluicegate-ledger.sqlite"
    ledger_spool_path: str = "sluicegate-ledger.spool"
    # Deadlines of the PostgreSQL ledger: each call of its writer (connect, migrate,
    # write a batch, ping, close), and each usage report. Rows a call could not
    # write by then go to the spool.
    ledger_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    ledger_query_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # On shutdown pending rows are spooled at once; then at most this long (and
    # at most a quarter of server.grace_period_s) is spent writing them.
    ledger_drain_s: Annotated[float, msgspec.Meta(ge=0)] = 3.0
    # Live configuration: the file (watched), or versions in PostgreSQL announced over Redis.
    config: Literal["file", "postgres"] = "file"
    # How often a replica checks for a version it missed (a lost message, Redis down).
    config_reconcile_s: PositiveFloat = 5.0
    # Embedded: how long the watched file must be quiet before it is read again.
    config_watch_debounce_s: Annotated[float, msgspec.Meta(ge=0)] = 0.2
    # Embedded: how often the file is looked at while nothing changes (a stat each time).
    config_watch_poll_s: PositiveFloat = 1.0
    # Files (/v1/files) and batch records: a local directory (several workers of one host may share it).
    files_path: Annotated[str, msgspec.Meta(min_length=1)] = "sluicegate-files"
    # Where files live: that directory, or an S3-compatible bucket (`s3`) every replica shares.
    files: Literal["local", "s3"] = "local"
    s3: S3Config | None = None
    # Batch records and result lines: that directory, or PostgreSQL (`postgres_dsn`) every replica shares.
    batches: Literal["local", "postgres"] = "local"
    # Stored responses (/v1/responses `store`) expire this many days after their creation (0: never).
    responses_retention_days: Annotated[int, msgspec.Meta(ge=0, le=36_500)] = 30
    # The response cache's entries: in this process, or in Redis (`redis_url`) every replica shares.
    cache: CacheStoreConfig = msgspec.field(default_factory=CacheStoreConfig)

    def __post_init__(self) -> None:
        if self.counters_cluster and self.counters != "redis":
            raise ValueError("`counters_cluster` needs `counters: redis`")

    def dsn(self) -> str | None:
        """The PostgreSQL URL; a reference is resolved here so the URL is never in the file."""
        if isinstance(self.postgres_dsn, SecretRef):
            return self.postgres_dsn.resolve()
        return self.postgres_dsn

    def redis(self) -> str | None:
        """The Redis URL; a reference is resolved here, and a failure names the key (never the value)."""
        if isinstance(self.redis_url, SecretRef):
            try:
                return self.redis_url.resolve()
            except ConfigError as exc:
                raise ConfigError(f"key `state.redis_url`: {exc}") from None
        return self.redis_url


class BatchesConfig(_Strict):
    """The Files and Batches APIs: upload limits and the runner that works through batches."""

    # The largest file POST /v1/files accepts (413 beyond it).
    max_file_bytes: PositiveInt = 200 * 1024 * 1024
    # Requests (lines) one batch input file may hold.
    max_requests: PositiveInt = 50_000
    # Batch requests in flight per alias on one replica, whether or not the alias has a queue.
    max_concurrent: PositiveInt = 2
    # How often the runner looks for batches to start or resume, and for a cancel of a running one.
    poll_interval_s: PositiveFloat = 2.0
    # A replica's claim on a batch: renewed while it runs; another replica resumes the batch once it lapses.
    lease_s: Annotated[float, msgspec.Meta(ge=1)] = 30.0
