"""Admission: calls a minute and calls in flight, per tenant and server."""

from __future__ import annotations

from sluicegate_mcp.admission import Admission
from sluicegate_mcp.options import Limits


def test_calls_a_minute_are_counted_per_tenant_and_server() -> None:
    now = [100.0]
    admission = Admission(clock=lambda: now[0])
    limits = Limits(rpm=2)
    for _ in range(2):
        assert admission.admit("acme", "docs", limits) is None
        admission.release("acme", "docs")
    refused = admission.admit("acme", "docs", limits)
    assert refused is not None and refused.reason == "rate" and 59 <= refused.retry_after_s <= 60
    assert admission.admit("acme", "files", limits) is None
    assert admission.admit("globex", "docs", limits) is None
    now[0] += 60.5
    assert admission.admit("acme", "docs", limits) is None


def test_calls_in_flight_are_held_until_released() -> None:
    admission = Admission()
    limits = Limits(max_concurrent=1)
    assert admission.admit("acme", "docs", limits) is None
    refused = admission.admit("acme", "docs", limits)
    assert refused is not None and refused.reason == "concurrency"
    admission.release("acme", "docs")
    assert admission.admit("acme", "docs", limits) is None


def test_no_limits_admit_everything() -> None:
    admission = Admission()
    assert all(admission.admit("acme", "docs", Limits()) is None for _ in range(1000))
