"""The transport layer every HTTP engine shares: Retry-After, status and exception mapping."""

from __future__ import annotations

from email.utils import formatdate

import aiohttp
import pytest

from core.errors import (
    GatewayError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from serving.http_transport import (
    MAX_RETRY_AFTER_S,
    ErrorFields,
    parse_retry_after,
    status_error,
    transport_error,
)

NOW = 1_700_000_000.0


def clock() -> float:
    return NOW


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),
        # An HTTP date in the obsolete "-0000" zone parses without a timezone: still GMT.
        (formatdate(NOW + 12), 12.0),
        ("99999999", MAX_RETRY_AFTER_S),
        (formatdate(NOW + 10**8, usegmt=True), MAX_RETRY_AFTER_S),
        ("inf", MAX_RETRY_AFTER_S),
    ],
)
def test_retry_after_is_delta_seconds_or_an_http_date(value: str, seconds: float) -> None:
    assert parse_retry_after(value, clock) == seconds


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, clock) is None


@pytest.mark.parametrize(
    ("status", "error_class", "down"),
    [
        (400, UpstreamRejected, False),
        (404, UpstreamRejected, False),
        (413, UpstreamRejected, False),
        (401, UpstreamUnavailable, True),
        (402, UpstreamUnavailable, True),
        (403, UpstreamUnavailable, True),
        (408, UpstreamTimeout, False),
        (504, UpstreamTimeout, False),
        (500, UpstreamError, False),
        (502, UpstreamUnavailable, True),
        (503, UpstreamUnavailable, True),
        (529, UpstreamUnavailable, True),
        (429, UpstreamRateLimited, False),
    ],
)
def test_statuses_map_to_one_error_each(status: int, error_class: type[GatewayError], down: bool) -> None:
    error = status_error("dep", status, ErrorFields(message="context too long", code="bad", param="messages"), None)
    assert type(error) is error_class
    assert error.deployment_down is down
    # Only a request the upstream refused is the client's to fix.
    assert error.retryable is (error_class is not UpstreamRejected)


def test_a_rejection_carries_the_upstreams_fields_and_status() -> None:
    error = status_error("dep", 413, ErrorFields(message="context too long", code="context_length_exceeded", param="messages"), None)
    assert isinstance(error, UpstreamRejected)
    assert (error.status, error.message, error.code, error.param) == (413, "context too long", "context_length_exceeded", "messages")


def test_a_code_the_providers_do_not_document_is_dropped() -> None:
    """An upstream's code reaches logs, the ledger and a metric label: free text (a quoted prompt) never does."""
    rejected = status_error("dep", 400, ErrorFields(message="m", code="bad_my secret prompt"), None)
    assert rejected.code == "upstream_rejected"
    failed = status_error("dep", 500, ErrorFields(code="quoting: my secret prompt"), None)
    assert "secret" not in failed.message and failed.code != "quoting: my secret prompt"
    assert status_error("dep", 400, ErrorFields(code="400"), None).code == "400"  # vLLM sends the status


def test_server_errors_name_the_type_never_the_message() -> None:
    error = status_error("dep", 500, ErrorFields(message="your prompt 'secret' broke me", code="api_error"), "3")
    assert error.message == "deployment dep answered 500: api_error"
    assert error.retry_after == 3.0


def test_rate_limit_reads_an_http_date() -> None:
    error = status_error("dep", 429, ErrorFields(), formatdate(NOW + 20, usegmt=True), clock)
    assert isinstance(error, UpstreamRateLimited) and error.retry_after == 20.0


def test_transport_exceptions_map_by_what_they_say_about_the_deployment() -> None:
    connect = transport_error(aiohttp.ConnectionTimeoutError(), "dep")
    assert type(connect) is UpstreamConnectTimeout and connect.deployment_down
    # Waiting for a free connection of our own pool says nothing about the upstream.
    pooled = transport_error(aiohttp.ConnectionTimeoutError(), "dep", pool_full=True)
    assert type(pooled) is UpstreamTimeout and not pooled.deployment_down
    read = transport_error(aiohttp.SocketTimeoutError(), "dep")
    assert type(read) is UpstreamTimeout and not read.deployment_down
    total = transport_error(TimeoutError(), "dep")
    assert type(total) is UpstreamTimeout and not total.deployment_down
    dropped = transport_error(aiohttp.ServerDisconnectedError(), "dep")
    assert type(dropped) is UpstreamError and not dropped.deployment_down
    assert dropped.message == "deployment dep closed the connection early"
