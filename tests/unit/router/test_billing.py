"""Reservation through the billing step: synchronous when nothing must be awaited, exact otherwise."""

from __future__ import annotations

import asyncio
import os
import tempfile

from bench.overhead_targets import bench_key_hash, sluicegate_config
from budgets.tokens import count_prompt_tokens, tiktoken_count
from core.config_check import load_config
from router.context import RequestContext
from router.gateway import Gateway
from serving.base import Usage


def _gateway(features: str) -> Gateway:
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "gw.yaml")
    text = sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), features)
    with open(path, "w") as fh:
        fh.write(text.replace('state: {ledger: sqlite, ledger_path: ledger.sqlite}', 'state: {ledger: "off"}'))
    return Gateway(load_config(path))


async def _ctx(gateway: Gateway, content: str) -> RequestContext:
    principal = await gateway.authenticate("Bearer sk-bench-0123456789")
    body = {"model": "fake-model", "messages": [{"role": "user", "content": content}]}
    ctx = RequestContext("r-" + str(len(content)), gateway.snapshot, principal, "chat", "chat", "fake-model", body)
    ctx.plan = [gateway.deployments["fake"]]
    return ctx


async def test_a_short_prompt_is_reserved_without_awaiting_anything() -> None:
    gateway = _gateway("budgets")
    ctx = await _ctx(gateway, "Say hello.")
    assert gateway.billing.reserve(ctx, ctx.plan) is None
    assert ctx.reservation is not None and not ctx.reservation.prompt_exact
    # a bound, never below the count
    assert ctx.reservation.prompt_estimate >= count_prompt_tokens("chat", ctx.body, tiktoken_count)
    assert ctx.allowance == ctx.max_tokens == 4096


async def test_a_long_prompt_is_counted_then_reserved() -> None:
    gateway = _gateway("budgets")
    ctx = await _ctx(gateway, "a fairly ordinary sentence, " * 40)
    pending = gateway.billing.reserve(ctx, ctx.plan)
    assert asyncio.iscoroutine(pending)
    await pending
    assert ctx.reservation is not None and ctx.reservation.prompt_exact
    assert ctx.reservation.prompt_estimate == count_prompt_tokens("chat", ctx.body, tiktoken_count)


async def test_a_principal_without_limits_or_budgets_reserves_nothing() -> None:
    gateway = _gateway("plain")
    ctx = await _ctx(gateway, "Say hello.")
    assert gateway.billing.reserve(ctx, ctx.plan) is None
    assert ctx.reservation is None and ctx.counter is None


async def _answered(gateway: Gateway, answered: list[str]) -> RequestContext:
    """A request reserved and served, its ``after_answer`` hook noting its id in ``answered``; not yet settled."""
    gateway.billing.after_answer.append(lambda ctx: answered.append(ctx.request_id))
    ctx = await _ctx(gateway, "Say hello.")
    assert gateway.billing.reserve(ctx, ctx.plan) is None
    ctx.served, ctx.deployment = ctx.plan[0], "fake"
    ctx.usage = Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)
    return ctx


async def test_settling_charges_at_once_and_books_after_the_answer() -> None:
    gateway = _gateway("budgets")
    rows: list[object] = []
    gateway.billing.ledger = type("Rows", (), {"record": staticmethod(rows.append)})()
    answered: list[str] = []
    ctx = await _answered(gateway, answered)
    assert gateway.billing.settle(ctx) is None
    # charged before the answer: its cost is known
    assert ctx.cost > 0
    assert gateway.billing.afterwards and rows == [] and answered == []
    await asyncio.sleep(0)  # the answer goes out in this step; the bookkeeping follows at the loop's next round
    assert answered == [ctx.request_id] and len(rows) == 1


async def test_drain_runs_the_bookkeeping_still_waiting() -> None:
    gateway = _gateway("budgets")
    answered: list[str] = []
    ctx = await _answered(gateway, answered)
    gateway.billing.settle(ctx)
    await gateway.billing.drain()
    assert answered == [ctx.request_id]
