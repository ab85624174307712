"""Batch requests are reserved and billed at the batch price (half the interactive one unless set), and their row names the batch."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from budgets.ledger_row import LedgerRow
from core.config import Config, ConfigError, Price
from core.config_check import decode_config
from router.auth import hash_api_key
from router.batch_context import BatchContext
from router.context import RequestContext
from router.gateway import Gateway
from serving.base import Usage

KEY = "sk-batch-price-0123456789"
PRICE = {"input_per_mtok": 1_000, "output_per_mtok": 3_001, "cached_input_per_mtok": 101}


def test_the_batch_price_is_half_unless_set() -> None:
    price = msgspec.convert(PRICE, Price)
    assert price.for_batch() == Price(input_per_mtok=500, output_per_mtok=1500, cached_input_per_mtok=50)
    chosen = msgspec.convert({**PRICE, "batch_input_per_mtok": 700, "batch_output_per_mtok": 0}, Price)
    assert chosen.for_batch() == Price(input_per_mtok=700, output_per_mtok=0, cached_input_per_mtok=50)
    assert Price().for_batch() == Price()


def test_a_batch_price_above_the_interactive_one_is_refused_naming_the_key() -> None:
    text = b"deployments: [{name: d, provider: openai, model: m, price: {input_per_mtok: 10, batch_input_per_mtok: 11}}]"
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.price\.batch_input_per_mtok"):
        decode_config(text, "sluicegate.yaml")


class _Rows:
    def __init__(self) -> None:
        self.rows: list[LedgerRow] = []

    def record(self, row: LedgerRow) -> None:
        self.rows.append(row)


def _gateway() -> tuple[Gateway, _Rows]:
    raw: dict[str, Any] = {
        "deployments": [{"name": "d", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "price": PRICE}],
        "models": [{"alias": "a", "deployments": ["d"]}],
        "tenants": [
            {"id": "t", "keys": [{"id": "k", "hash": hash_api_key(KEY)}], "budgets": [{"kind": "money", "period": "lifetime", "limit": 1}]}
        ],
        "state": {"ledger": "off"},
    }
    gateway = Gateway(msgspec.convert(raw, Config))
    rows = _Rows()
    gateway.billing.ledger = rows  # type: ignore[assignment]
    return gateway, rows


async def _billed(gateway: Gateway, ctx: RequestContext) -> tuple[int | None, int]:
    deployment = gateway.deployments["d"]
    ctx.plan = [deployment]
    assert gateway.billing.reserve(ctx, ctx.plan) is None
    allowance = ctx.allowance
    ctx.served, ctx.deployment = deployment, "d"
    ctx.usage = Usage(prompt_tokens=10, completion_tokens=20, total_tokens=30)
    assert gateway.billing.settle(ctx) is None
    return allowance, ctx.cost


async def test_a_batch_request_is_reserved_and_billed_at_the_batch_price() -> None:
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
    measured = []
    for make in (
        lambda g, p: RequestContext("r-1", g.snapshot, p, "chat", "chat", "a", body),
        lambda g, p: BatchContext("r-2", g.snapshot, p, "chat", "batch", "a", body, batch_id="batch_abc"),
    ):
        gateway, rows = _gateway()  # each on a budget of its own: 1 micro-USD
        principal = await gateway.authenticate(f"Bearer {KEY}")
        allowance, cost = await _billed(gateway, make(gateway, principal))
        await gateway.billing.drain()  # the row is written after the answer
        [row] = rows.rows
        measured.append((allowance, cost, row.cost, row.batch_id))
    (interactive_allowance, interactive_cost, interactive_row, no_batch), (batch_allowance, batch_cost, batch_row, batch_id) = measured
    assert interactive_cost == interactive_row == 10 * 1_000 + 20 * 3_001 and no_batch is None
    assert batch_cost == batch_row == 10 * 500 + 20 * 1_500 and batch_id == "batch_abc"
    # the same money budget reserves for about twice the completion at half the price
    assert interactive_allowance is not None and batch_allowance is not None
    assert 1.9 < batch_allowance / interactive_allowance < 2.1
