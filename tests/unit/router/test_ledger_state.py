"""The ledger's config keys reach the ledger, and SIGTERM's grace period is split so shutdown ends within it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from budgets.ledger_postgres import PostgresLedger, PostgresStore
from budgets.ledger_sqlite import SQLiteLedger
from core.config import Config
from router.state import open_ledger, shutdown_budget


def _config(tmp_path: Path, grace: float, **state: object) -> Config:
    raw = {"server": {"grace_period_s": grace}, "state": {"ledger_spool_path": str(tmp_path / "spool"), **state}}
    return msgspec.convert(raw, Config)


@pytest.mark.parametrize(
    ("grace", "drain", "expected"),
    [(15, 3.0, (9.0, 3.0)), (30, 3.0, (24.0, 3.0)), (10, 3.0, (5.0, 2.5)), (1, 3.0, (0.5, 0.25)), (0, 3.0, (0.0, 0.0)),
     (15, 0.0, (15.0, 0.0))],
)  # fmt: skip
def test_the_grace_period_covers_requests_the_ledger_drain_and_the_rest(
    tmp_path: Path, grace: float, drain: float, expected: tuple[float, float]
) -> None:
    config = _config(tmp_path, grace, ledger_drain_s=drain)
    in_flight, ledger = shutdown_budget(config)
    assert (in_flight, ledger) == expected
    assert in_flight + 2 * ledger <= grace  # the second share: the rest of the shutdown and the exit


def test_the_postgres_ledger_gets_its_deadlines_and_drain_from_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path, 20, ledger="postgres", postgres_dsn="postgresql://x@127.0.0.1:1/db",
                     ledger_timeout_s=1.5, ledger_query_timeout_s=12, ledger_drain_s=2)  # fmt: skip
    ledger = open_ledger(config)
    assert isinstance(ledger, PostgresLedger)
    store = ledger._store
    assert isinstance(store, PostgresStore)
    assert (store._timeout_s, store._query_timeout_s, ledger._opts.drain_s) == (1.5, 12.0, 2.0)


def test_the_sqlite_ledger_gets_its_drain_from_the_config(tmp_path: Path) -> None:
    ledger = open_ledger(_config(tmp_path, 4, ledger_path=str(tmp_path / "l.sqlite"), ledger_drain_s=3))
    assert isinstance(ledger, SQLiteLedger) and ledger._opts.drain_s == 1.0


@pytest.mark.parametrize("key", ["ledger_timeout_s", "ledger_query_timeout_s"])
def test_a_deadline_must_be_positive(tmp_path: Path, key: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=key):
        _config(tmp_path, 15, **{key: 0})
