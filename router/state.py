"""Config --> the shared-state backends: counter store and ledger, embedded or production."""

from __future__ import annotations

from budgets.accounting import AccountingSettings
from budgets.ledger import Ledger
from budgets.store import CounterStore
from router.config import Config, ConfigError


def open_counter_store(config: Config) -> CounterStore:
    state = config.state
    if state.counters == "redis":
        if not state.redis_url:
            raise ConfigError("key `state.redis_url`: required when `state.counters` is redis")
        from budgets.store_redis import RedisCounterStore

        return RedisCounterStore(state.redis_url)
    from budgets.store_memory import MemoryCounterStore

    return MemoryCounterStore()


def open_ledger(config: Config) -> Ledger | None:
    state = config.state
    if state.ledger == "off":
        return None
    if state.ledger == "postgres":
        dsn = state.dsn()
        if not dsn:
            raise ConfigError("key `state.postgres_dsn`: required when `state.ledger` is postgres")
        from budgets.ledger_postgres import PostgresLedger

        return PostgresLedger(dsn, state.ledger_spool_path)
    from budgets.ledger_sqlite import SQLiteLedger

    return SQLiteLedger(state.ledger_path, spool_path=state.ledger_spool_path)


def accounting_settings(config: Config) -> AccountingSettings:
    b = config.budgets
    return AccountingSettings(
        default_completion_cap=b.default_completion_cap,
        lease_ms=int(b.lease_s * 1000),
        limits_fail_open=b.limits_on_store_error == "fail_open",
        budgets_fail_open=b.budgets_on_store_error == "fail_open",
    )
