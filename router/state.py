"""Config --> the shared-state backends: counter store and ledger, embedded or production."""

from __future__ import annotations

from budgets.accounting import AccountingSettings
from budgets.ledger import Ledger, LedgerOptions
from budgets.store import CounterStore
from core.config import Config, ConfigError
from router.config_store import ConfigStore, MemoryConfigStore


def open_counter_store(config: Config) -> CounterStore:
    state = config.state
    if state.counters == "redis":
        if not state.redis_url:
            raise ConfigError("key `state.redis_url`: required when `state.counters` is redis")
        from budgets.store_redis import RedisCounterStore

        return RedisCounterStore(state.redis() or "", cluster=state.counters_cluster)
    from budgets.store_memory import MemoryCounterStore

    return MemoryCounterStore()


def shutdown_budget(config: Config) -> tuple[float, float]:
    """How ``server.grace_period_s`` is spent on SIGTERM: (in-flight requests, ledger drain).

    The ledger drains for ``state.ledger_drain_s``, at most a quarter of the
    grace period; in-flight requests get what is left less as much again, which
    the rest of the shutdown and the process's exit have, so the process is gone
    before the SIGKILL that follows the grace period.
    """
    grace = config.server.grace_period_s
    drain = min(config.state.ledger_drain_s, grace / 4)
    return grace - 2 * drain, drain


def open_ledger(config: Config) -> Ledger | None:
    state = config.state
    if state.ledger == "off":
        return None
    options = LedgerOptions(drain_s=shutdown_budget(config)[1])
    if state.ledger == "postgres":
        dsn = state.dsn()
        if not dsn:
            raise ConfigError("key `state.postgres_dsn`: required when `state.ledger` is postgres")
        from budgets.ledger_postgres import PostgresLedger

        return PostgresLedger(
            dsn,
            state.ledger_spool_path,
            options=options,
            timeout_s=state.ledger_timeout_s,
            query_timeout_s=state.ledger_query_timeout_s,
        )
    from budgets.ledger_sqlite import SQLiteLedger

    return SQLiteLedger(state.ledger_path, spool_path=state.ledger_spool_path, options=options)


def accounting_settings(config: Config) -> AccountingSettings:
    b = config.budgets
    return AccountingSettings(
        default_completion_cap=b.default_completion_cap,
        lease_ms=int(b.lease_s * 1000),
        limits_fail_open=b.limits_on_store_error == "fail_open",
        budgets_fail_open=b.budgets_on_store_error == "fail_open",
    )


def open_config_store(config: Config) -> ConfigStore:
    """The live config's versions: this process's, or PostgreSQL shared by every replica."""
    state = config.state
    if state.config == "postgres":
        from router.config_store_postgres import PostgresConfigStore

        dsn = state.dsn()
        assert dsn is not None  # validated: `state.config: postgres` needs a DSN
        return PostgresConfigStore(dsn, state.redis())
    return MemoryConfigStore()
