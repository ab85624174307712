"""The tenant store the config selects.

The stores and what they share live in modules of their own
(``router.tenant_records``, ``router.tenants_file``, ``router.tenants_postgres``),
so that none of them imports this one.
"""

from __future__ import annotations

from core.config import Config, ConfigError
from router.tenant_records import TenantStore


def open_tenant_store(config: Config, pepper: bytes, *, listen: bool = True) -> TenantStore:
    """The store the config selects; with ``state.redis_url`` revocations reach every replica."""
    state = config.state
    if state.tenants == "config":
        from router.tenants_file import FileTenantStore

        return FileTenantStore(config.tenants, pepper)
    from router.revocation import RevocationBus
    from router.tenants_postgres import PostgresTenantStore

    try:
        dsn = state.dsn()
    except ConfigError as exc:
        raise ConfigError(f"key `state.postgres_dsn`: {exc}") from None
    if dsn is None:
        raise ConfigError("key `state.postgres_dsn`: required when `state.tenants` is 'postgres'")
    bus = RevocationBus(state.redis() or "") if state.redis_url else None
    return PostgresTenantStore(dsn, pepper, bus=bus, listen=listen)
