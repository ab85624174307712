"""`/v1/ledger/usage` answers the same bytes whether the hourly rollup or the raw rows are read.

Rows spread over days, hours, tenants, models and statuses are written to the
gateway's ledger; each report is fetched as served (from the rollup where it
can be) and again with the store held to the raw query.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

import budgets.ledger_sqlite
from bench.fake_upstream import FakeUpstream
from budgets import ledger_query
from budgets.ledger_query import UsageQuery
from budgets.ledger_usage import reads_rollup
from router.auth import hash_api_key
from tests.conftest import make_config
from tests.contract.test_ledger import make_row
from tests.integration.gateway_server import running_gateway

KEYS = {"a": "sk-rollup-a-0123456789", "ops": "sk-rollup-ops-0123456789"}
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
RANGES = [
    ("2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"),  # whole hours: the rollup alone
    ("2026-01-01T00:17:00Z", "2026-01-02T13:45:12.5Z"),  # edges from the rows
    ("2026-01-01T05:10:00Z", "2026-01-01T05:50:00Z"),  # within an hour: the rows alone
]
GROUPINGS = ["", "tenant,model", "day", "hour,status", "deployment,provider", "key,day"]


@pytest.fixture(scope="module")
async def gateway_url(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    tenants = [
        {"id": "roll-a", "keys": [{"id": "ka", "hash": hash_api_key(KEYS["a"])}]},
        {"id": "roll-ops", "keys": [{"id": "kops", "hash": hash_api_key(KEYS["ops"]), "scopes": ["ops:*"]}]},
    ]
    config = make_config(fake_upstream.url, tenants=tenants)
    async with running_gateway(config) as (base, gateway), aiohttp.ClientSession() as http:
        assert gateway.ledger is not None
        for n in range(400):
            gateway.ledger.record(
                make_row(
                    n, started_at=T0 + timedelta(minutes=9 * n, seconds=n % 7), tenant=("roll-a", "roll-b", "roll-c")[n % 3],
                    model=("m1", "m2")[n % 5 == 0], deployment=("d1", "d2")[n % 4 == 0], key_id=("k1", "k2")[n % 2],
                    status=(200, 200, 429, 500)[n % 4], cache=("hit", None, "miss")[n % 3], saved=n,
                )
            )  # fmt: skip
        await gateway.ledger.flush()
        yield base, http


async def _usage(http: aiohttp.ClientSession, url: str, who: str) -> bytes:
    async with http.get(url, headers={"authorization": f"Bearer {KEYS[who]}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


@pytest.mark.parametrize("who", ["a", "ops"])
async def test_usage_is_the_same_from_the_rollup_and_from_the_rows(
    gateway_url: tuple[str, aiohttp.ClientSession], who: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, http = gateway_url
    urls = [f"{base}/v1/ledger/usage?from={a}&to={b}&group_by={g}" for a, b in RANGES for g in GROUPINGS]
    served = [await _usage(http, url, who) for url in urls]
    monkeypatch.setattr(budgets.ledger_sqlite, "usage_sql", ledger_query.usage_sql)
    raw = [await _usage(http, url, who) for url in urls]
    for url, got, expected in zip(urls, served, raw, strict=True):
        assert got == expected, url
    assert any(b'"requests"' in body for body in served)


def test_the_ranges_above_cover_both_paths() -> None:
    def query(start: str, end: str) -> UsageQuery:
        return UsageQuery(start=datetime.fromisoformat(start), end=datetime.fromisoformat(end), group_by=["tenant"])

    assert [reads_rollup(query(a, b)) for a, b in RANGES] == [True, True, False]
