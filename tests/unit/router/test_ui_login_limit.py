"""The limit on failed console sign-ins: a sliding window per address and overall, bounded, IPv6 by its /64."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from router.ui.login_limit import LoginLimit, client_address, too_many


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    limit = LoginLimit(window_s=60, per_address=3, overall=100, clock=clock)
    for _ in range(2):
        limit.failed("192.0.2.1")
        clock.now += 10
    assert limit.retry_after("192.0.2.1") is None
    limit.failed("192.0.2.1")
    assert limit.retry_after("192.0.2.1") == 40  # the first failure, at 1000, leaves the window at 1060
    assert limit.retry_after("192.0.2.2") is None  # another address is not held back
    clock.now = 1060
    assert limit.retry_after("192.0.2.1") is None
    # A success forgets the address's failures.
    limit.failed("192.0.2.1")
    limit.succeeded("192.0.2.1")
    assert limit.retry_after("192.0.2.1") is None


def test_failures_from_many_addresses_reach_the_overall_limit() -> None:
    clock = Clock()
    limit = LoginLimit(window_s=60, per_address=5, overall=4, clock=clock)
    for i in range(4):
        limit.failed(f"198.51.100.{i}")
    assert limit.retry_after("203.0.113.9") == 60
    clock.now += 60
    assert limit.retry_after("203.0.113.9") is None


def test_the_addresses_kept_are_bounded() -> None:
    limit = LoginLimit(per_address=1, capacity=2, clock=Clock())
    for address in ("a", "b", "c"):
        limit.failed(address)
    assert limit.retry_after("a") is None  # dropped, least recent first
    assert limit.retry_after("b") is not None and limit.retry_after("c") is not None


def _request(host: str | None) -> Any:
    return cast(Any, SimpleNamespace(client=None if host is None else SimpleNamespace(host=host)))


def test_addresses_are_counted_by_host_and_ipv6_by_its_64() -> None:
    assert client_address(_request("192.0.2.7")) == "192.0.2.7"
    assert client_address(_request("2001:db8:1:2:aaaa::1")) == client_address(_request("2001:db8:1:2:bbbb::2")) == "2001:db8:1:2::/64"
    assert client_address(_request("2001:db8:1:3::1")) != client_address(_request("2001:db8:1:2::1"))
    assert client_address(_request("::ffff:192.0.2.7")) == "192.0.2.7"
    assert client_address(_request(None)) == "unknown" and client_address(_request("testclient")) == "testclient"


def test_the_message_says_how_long_to_wait() -> None:
    assert too_many(42) == "Too many failed sign-ins: wait 42 seconds, then try again."
