"""Versions of the live configuration: the record, its content hash and what can go wrong writing one."""

from __future__ import annotations

import hashlib

import msgspec

from core.config import LiveConfig
from core.errors import GatewayError, NotFound


class VersionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the history, without the document."""

    version: int
    hash: str
    actor: str
    reason: str
    # Epoch seconds, as the store's clock saw the commit.
    created_at: float


class ConfigVersion(VersionSummary, frozen=True, kw_only=True):
    document: LiveConfig

    def summary(self) -> VersionSummary:
        return VersionSummary(version=self.version, hash=self.hash, actor=self.actor, reason=self.reason, created_at=self.created_at)


_encoder = msgspec.json.Encoder(order="deterministic")


def canonical(document: LiveConfig) -> bytes:
    """The document as stored and hashed: keys sorted, so equal documents give equal bytes."""
    return _encoder.encode(document)


def document_hash(document: LiveConfig) -> str:
    return "sha256:" + hashlib.sha256(canonical(document)).hexdigest()


class VersionConflict(GatewayError):
    """The writer's version is not the latest: someone else wrote first."""

    status = 409
    type = "invalid_request_error"
    code = "version_conflict"


class VersionNotFound(NotFound):
    code = "version_not_found"


class InvalidConfig(GatewayError):
    """The document is refused; the message names the key path."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_config"


class ConfigStoreUnavailable(GatewayError):
    """The version history cannot be reached: writes fail, every replica keeps serving."""

    status = 503
    type = "server_error"
    code = "config_store_unavailable"
    retryable = True
