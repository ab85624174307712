"""Config --> where the Files and Batches APIs keep their state: files, batch records, and claims on running batches.

Embedded by default: a local directory (``state.files_path``) that the worker
processes of one host share, claims by ``flock``. For several replicas on
several hosts: files in an S3-compatible bucket (``state.files: s3``), batch
records in PostgreSQL (``state.batches: postgres``) with their claims as a
lease on each batch's row; Redis claims remain for a local batch store with
``state.redis_url``.
"""

from __future__ import annotations

from pathlib import Path

from core.config import Config, ConfigError
from router.batch_claims import BatchClaims, LocalClaims, PostgresClaims, RedisClaims
from router.batch_records import BatchStore
from router.batch_store import LocalBatchStore
from router.files_store import FileStore
from router.files_store_local import LocalFileStore


def open_file_store(config: Config) -> FileStore:
    """The store ``state.files`` names: the local directory, or the S3 bucket of ``state.s3``."""
    state = config.state
    if state.files == "s3":
        from router.files_store_s3 import S3FileStore, s3_client

        if state.s3 is None:
            raise ConfigError("key `state.s3`: required when `state.files` is 's3'")
        return S3FileStore(s3_client(state.s3), prefix=state.s3.prefix, part_bytes=state.s3.part_bytes)
    return LocalFileStore(state.files_path)


def open_batch_store(config: Config) -> BatchStore:
    """The store ``state.batches`` names: the local directory, or PostgreSQL (``state.postgres_dsn``)."""
    state = config.state
    if state.batches == "postgres":
        from router.batch_store_postgres import PostgresBatchStore

        dsn = state.dsn()
        if not dsn:
            raise ConfigError("key `state.postgres_dsn`: required when `state.batches` is 'postgres'")
        return PostgresBatchStore(dsn)
    return LocalBatchStore(state.files_path)


def open_claims(config: Config, batches: BatchStore) -> BatchClaims:
    """A lease on the batch's row beside PostgreSQL records; else Redis when there is one; else a lock file."""
    from router.batch_store_postgres import PostgresBatchStore

    if isinstance(batches, PostgresBatchStore):
        return PostgresClaims(batches.calls, config.batches.lease_s)
    if config.state.redis_url:
        return RedisClaims(config.state.redis() or "", config.batches.lease_s)
    return LocalClaims(Path(config.state.files_path) / "batches" / "claims")
