"""The exact response cache, end to end: the official openai SDK against a gateway in front of the fake upstream.

Each gateway runs as a subprocess with aliases that cache, once with the
in-process store and once with Redis (skipped when none runs on
127.0.0.1:6379), and once more with Redis pointed at a port where nothing
listens: that gateway serves every request as a miss, never a 500. Upstream
calls are counted through the fake's request log, by a marker unique to each
test; ledger rows are read from the gateway's embedded SQLite ledger.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from budgets.ledger_row import LedgerRow
from budgets.ledger_sqlite_schema import from_record
from router.auth import hash_api_key
from tests.e2e.conftest import Process, free_port, gateway_config, serve

KEYS = {tenant: f"sk-e2e-cache-{tenant}-" + secrets.token_hex(12) for tenant in ("a", "b", "optout", "limited", "finops")}
Requests = Callable[[str], list[dict[str, Any]]]
# The cached deployment's price, so that a miss costs something a hit then saves.
PRICE = {"input_per_mtok": 3_000_000, "output_per_mtok": 5_000_000}
CACHE_PRICE = {"input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000}


def _redis_up() -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", 6379)) == 0


def _settings(upstream: str, redis_url: str | None) -> dict[str, Any]:
    settings = gateway_config(upstream)
    settings["deployments"].append({"name": "cached", "provider": "openai", "base_url": upstream, "model": "fake-normal", "price": PRICE})
    settings["models"] += [
        {"alias": "cached-model", "deployments": ["cached"], "cache": {"ttl_s": 300}},
        {"alias": "priced-cache", "deployments": ["cached"], "cache": {"ttl_s": 300}, "cache_price": CACHE_PRICE},
    ]
    settings["tenants"] += [
        {"id": "cache-a", "keys": [{"id": "k", "hash": hash_api_key(KEYS["a"])}]},
        {"id": "cache-b", "keys": [{"id": "k", "hash": hash_api_key(KEYS["b"])}]},
        {"id": "cache-optout", "keys": [{"id": "k", "hash": hash_api_key(KEYS["optout"])}], "cache": {"enabled": False}},
        {"id": "cache-limited", "keys": [{"id": "k", "hash": hash_api_key(KEYS["limited"])}], "limits": {"rpm": 3}},
        {"id": "cache-finops", "keys": [{"id": "k", "hash": hash_api_key(KEYS["finops"])}]},
    ]
    if redis_url is not None:
        settings["state"] = {"redis_url": redis_url, "cache": {"backend": "redis", "prefix": f"sg:e2e:{secrets.token_hex(4)}:"}}
    return settings


@pytest.fixture(scope="module", params=["memory", "redis"])
def cache_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Process]:
    if request.param == "redis" and not _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    redis_url = "redis://127.0.0.1:6379/0" if request.param == "redis" else None
    proc = serve(_settings(fake_server.url + "/v1", redis_url), tmp_path_factory.mktemp(f"cache-{request.param}"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def dead_redis_gateway(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Process]:
    settings = _settings(fake_server.url + "/v1", f"redis://127.0.0.1:{free_port()}/0")
    proc = serve(settings, tmp_path_factory.mktemp("cache-dead-redis"))
    yield proc
    proc.stop()


@contextlib.contextmanager
def sdk(gateway: Process, tenant: str = "a") -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=20.0) as client:
        yield client


def marker() -> str:
    return f"cache-marker-{secrets.token_hex(6)}"


def ask(client: openai.OpenAI, text: str, model: str = "cached-model", headers: dict[str, str] | None = None, **extra: Any) -> Any:
    """A chat request (temperature 0 unless ``extra`` says otherwise), raw: headers and the parsed completion."""
    options = {"temperature": 0, **extra}
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], extra_headers=headers, **options
    )


def ledger_row(gateway: Process, request_id: str, timeout_s: float = 10.0) -> LedgerRow:
    path = Path(gateway.log).parent / "sluicegate-ledger.sqlite"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.OperationalError):
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
                db.row_factory = sqlite3.Row
                row = db.execute("SELECT * FROM ledger WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                return from_record(row)
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} is not in the ledger after {timeout_s} s")


def stored(gateway: Process, client: openai.OpenAI, text: str, **extra: Any) -> Any:
    """Ask once (a miss) and wait until the answer is stored: the write runs after the response."""
    first = ask(client, text, **extra)
    assert first.headers["x-sluicegate-cache"] == "miss"
    ledger_row(gateway, first.headers["x-request-id"])  # settled, so the write has started
    time.sleep(0.2)
    return first


def test_a_repeated_deterministic_request_is_a_hit(cache_gateway: Process, upstream_requests: Requests) -> None:
    text = marker()
    with sdk(cache_gateway) as client:
        first = stored(cache_gateway, client, text)
        second = ask(client, text)
    assert second.headers["x-sluicegate-cache"] == "hit"
    assert second.parse().model_dump() == first.parse().model_dump()  # the same answer, id included: a replay
    assert len(upstream_requests(text)) == 1
    miss = ledger_row(cache_gateway, first.headers["x-request-id"])
    hit = ledger_row(cache_gateway, second.headers["x-request-id"])
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert miss.cache_entry is not None and len(miss.cache_entry) == 16 and hit.cache_entry == miss.cache_entry
    assert miss.cost > 0 and miss.saved == 0
    # A hit is billed at the cache price (none: free), and saved what the answer first cost.
    assert (hit.cost, hit.saved) == (0, miss.cost)
    assert (hit.prompt_tokens, hit.completion_tokens, hit.deployment) == (miss.prompt_tokens, miss.completion_tokens, "cached")
    for header in second.headers:
        assert miss.cache_entry not in second.headers[header]  # nothing a client sees names the entry


@pytest.mark.parametrize(
    "change",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]},
        {"response_format": {"type": "json_object"}},
        {"seed": 8},
        {"seed": 7, "temperature": 0.5},
    ],
    ids=["tools", "response_format", "seed", "temperature"],
)
def test_a_changed_field_is_a_miss(cache_gateway: Process, upstream_requests: Requests, change: dict[str, Any]) -> None:
    text = marker()
    base = {"seed": 7, "temperature": 0}
    with sdk(cache_gateway) as client:
        stored(cache_gateway, client, text, **base)
        assert ask(client, text, **base).headers["x-sluicegate-cache"] == "hit"
        changed = ask(client, text, **{**base, **change})
    assert changed.headers["x-sluicegate-cache"] == "miss"
    assert len(upstream_requests(text)) == 2


def test_a_request_that_does_not_qualify_bypasses(cache_gateway: Process, upstream_requests: Requests) -> None:
    text = marker()
    with sdk(cache_gateway) as client:
        results = [ask(client, text, temperature=0.7).headers["x-sluicegate-cache"] for _ in range(2)]
    assert results == ["bypass", "bypass"]
    assert len(upstream_requests(text)) == 2


def test_another_tenant_asking_the_same_is_a_miss(cache_gateway: Process, upstream_requests: Requests) -> None:
    text = marker()
    with sdk(cache_gateway, "a") as a, sdk(cache_gateway, "b") as b:
        stored(cache_gateway, a, text)
        other = ask(b, text)
        assert other.headers["x-sluicegate-cache"] == "miss"
        assert ask(a, text).headers["x-sluicegate-cache"] == "hit"
    assert len(upstream_requests(text)) == 2


def test_a_tenant_that_opted_out_always_bypasses(cache_gateway: Process, upstream_requests: Requests) -> None:
    text = marker()
    with sdk(cache_gateway, "optout") as client:
        results = [ask(client, text).headers["x-sluicegate-cache"] for _ in range(2)]
    assert results == ["bypass", "bypass"]
    assert len(upstream_requests(text)) == 2


def test_no_store_bypasses_and_no_cache_refreshes(cache_gateway: Process, upstream_requests: Requests) -> None:
    text = marker()
    with sdk(cache_gateway) as client:
        stored(cache_gateway, client, text)
        assert ask(client, text, headers={"Cache-Control": "no-store"}).headers["x-sluicegate-cache"] == "bypass"
        refreshed = ask(client, text, headers={"Cache-Control": "no-cache"})
        assert refreshed.headers["x-sluicegate-cache"] == "miss"
        row = ledger_row(cache_gateway, refreshed.headers["x-request-id"])
        assert row.cache == "miss" and row.cache_entry is not None
    assert len(upstream_requests(text)) == 3


def test_a_streamed_hit_replays_as_a_stream(cache_gateway: Process, upstream_requests: Requests) -> None:
    text = marker()
    options = {"stream": True, "stream_options": {"include_usage": True}}

    def streamed(client: openai.OpenAI) -> tuple[str, str, list[Any]]:
        raw = client.chat.completions.with_raw_response.create(
            model="cached-model", messages=[{"role": "user", "content": text}], temperature=0, **options
        )
        chunks = list(raw.parse())
        return raw.headers["x-sluicegate-cache"], raw.headers["x-request-id"], chunks

    with sdk(cache_gateway) as client:
        result, request_id, first = streamed(client)
        assert result == "miss"
        ledger_row(cache_gateway, request_id)
        time.sleep(0.2)
        result, request_id, second = streamed(client)
        assert result == "hit"
        # The same shape: content chunks, then the usage chunk; the SDK parsed it to the end ([DONE]).
        assert [c.model_dump() for c in second] == [c.model_dump() for c in first]
        assert second[-1].usage is not None and second[-1].choices == []
        text_of = "".join(c.choices[0].delta.content or "" for c in second if c.choices)
        assert text_of
        # A stream that did not ask for usage is another shape: not this entry.
        plain = client.chat.completions.with_raw_response.create(
            model="cached-model", messages=[{"role": "user", "content": text}], temperature=0, stream=True
        )
        assert plain.headers["x-sluicegate-cache"] == "miss"
        assert all(c.usage is None for c in plain.parse())
    assert len(upstream_requests(text)) == 2
    row = ledger_row(cache_gateway, request_id)
    assert (row.cache, row.stream, row.cost) == ("hit", True, 0)


def test_a_hit_is_billed_at_the_cache_price(cache_gateway: Process) -> None:
    text = marker()
    with sdk(cache_gateway) as client:
        first = ask(client, text, model="priced-cache")
        ledger_row(cache_gateway, first.headers["x-request-id"])
        time.sleep(0.2)
        second = ask(client, text, model="priced-cache")
    assert second.headers["x-sluicegate-cache"] == "hit"
    miss = ledger_row(cache_gateway, first.headers["x-request-id"])
    hit = ledger_row(cache_gateway, second.headers["x-request-id"])
    expected = (hit.prompt_tokens + hit.completion_tokens) * 1_000_000  # pico-USD at 1 USD per million tokens
    assert hit.cost == expected and 0 < hit.cost < miss.cost and hit.saved == miss.cost


def test_a_hit_still_counts_against_rpm(cache_gateway: Process, upstream_requests: Requests) -> None:
    text = marker()
    # Rate windows are fixed minutes: start early in one, so that the four requests share it.
    into = time.time() % 60
    if into > 50:
        time.sleep(60.5 - into)
    with sdk(cache_gateway, "limited") as client:
        stored(cache_gateway, client, text)
        assert [ask(client, text).headers["x-sluicegate-cache"] for _ in range(2)] == ["hit", "hit"]
        with pytest.raises(openai.RateLimitError):
            ask(client, text)
    assert len(upstream_requests(text)) == 1


def test_finops_usage_shows_savings_per_tenant_and_alias(cache_gateway: Process) -> None:
    text = marker()
    with sdk(cache_gateway, "finops") as client:
        first = stored(cache_gateway, client, text)
        second = ask(client, text)
    assert second.headers["x-sluicegate-cache"] == "hit"
    miss = ledger_row(cache_gateway, first.headers["x-request-id"])
    ledger_row(cache_gateway, second.headers["x-request-id"])
    headers = {"authorization": f"Bearer {KEYS['finops']}"}
    usage = httpx.get(cache_gateway.url + "/v1/ledger/usage", params={"group_by": "tenant,model"}, headers=headers, timeout=10)
    assert usage.status_code == 200, usage.text
    [row] = usage.json()["data"]
    assert (row["tenant"], row["model"], row["requests"], row["cache_hits"]) == ("cache-finops", "cached-model", 2, 1)
    assert row["saved_pico_usd"] == miss.cost


def test_metrics_count_hits_misses_and_bytes(cache_gateway: Process) -> None:
    text = marker()
    with sdk(cache_gateway) as client:
        stored(cache_gateway, client, text)
        ask(client, text)
    metrics = httpx.get(cache_gateway.url + "/metrics", timeout=10).text
    for line in (
        'sluicegate_cache_requests_total{model="cached-model",result="hit"}',
        'sluicegate_cache_requests_total{model="cached-model",result="miss"}',
        'sluicegate_cache_bytes_total{direction="served",model="cached-model"}',
        'sluicegate_cache_bytes_total{direction="stored",model="cached-model"}',
    ):
        assert line in metrics, line


def test_a_dead_redis_serves_misses_and_never_a_500(dead_redis_gateway: Process, upstream_requests: Requests) -> None:
    text = marker()
    with sdk(dead_redis_gateway) as client:
        results = [ask(client, text).headers["x-sluicegate-cache"] for _ in range(3)]
        chunks = list(
            client.chat.completions.create(model="cached-model", messages=[{"role": "user", "content": text}], temperature=0, stream=True)
        )
    assert results == ["miss", "miss", "miss"]
    assert chunks and any(c.choices and c.choices[0].delta.content for c in chunks)
    assert len(upstream_requests(text)) == 4


def test_messages_and_responses_hit_rendered_for_their_own_surface(cache_gateway: Process, upstream_requests: Requests) -> None:
    """Anthropic Messages and translated Responses requests are cached too: each replay in its own envelope."""
    text = marker()
    with anthropic.Anthropic(base_url=cache_gateway.url, api_key=KEYS["a"], max_retries=0, timeout=20.0) as claude:

        def ask_claude() -> Any:
            messages = [{"role": "user", "content": text}]
            return claude.messages.with_raw_response.create(
                model="cached-model", max_tokens=64, extra_body={"temperature": 0}, messages=messages
            )

        miss = ask_claude()
        ledger_row(cache_gateway, miss.headers["x-request-id"])
        time.sleep(0.2)
        hit = ask_claude()
        assert (miss.headers["x-sluicegate-cache"], hit.headers["x-sluicegate-cache"]) == ("miss", "hit")
        first, last = miss.parse(), hit.parse()
        assert last.content == first.content and last.usage.output_tokens == first.usage.output_tokens > 0
        assert last.id != first.id
        with claude.messages.stream(
            model="cached-model", max_tokens=64, extra_body={"temperature": 0}, messages=[{"role": "user", "content": text + " streamed"}]
        ) as stream:
            streamed = stream.get_final_message()
            assert stream.response.headers["x-sluicegate-cache"] == "miss"
            request_id = stream.response.headers["x-request-id"]
        ledger_row(cache_gateway, request_id)
        time.sleep(0.2)
        with claude.messages.stream(
            model="cached-model", max_tokens=64, extra_body={"temperature": 0}, messages=[{"role": "user", "content": text + " streamed"}]
        ) as stream:
            replayed = stream.get_final_message()
            assert stream.response.headers["x-sluicegate-cache"] == "hit"
        assert replayed.content == streamed.content and replayed.usage.output_tokens == streamed.usage.output_tokens > 0
    with sdk(cache_gateway) as client:
        one = client.responses.with_raw_response.create(model="cached-model", input=text + " responses", temperature=0)
        ledger_row(cache_gateway, one.headers["x-request-id"])
        time.sleep(0.2)
        two = client.responses.with_raw_response.create(model="cached-model", input=text + " responses", temperature=0)
        assert (one.headers["x-sluicegate-cache"], two.headers["x-sluicegate-cache"]) == ("miss", "hit")
        a, b = one.parse(), two.parse()
        assert a.output_text == b.output_text and a.id != b.id  # the same answer, each under its own response id
        assert client.responses.retrieve(b.id).output_text == b.output_text  # a replayed response is stored like any other
        events = list(client.responses.create(model="cached-model", input=text + " responses", temperature=0, stream=True))
        assert events[-1].type == "response.completed"
    # One upstream call per distinct request: Messages unary, Messages stream, Responses (unary; its stream is another key).
    chat_calls = [r for r in upstream_requests(text) if r["path"].endswith("/chat/completions")]
    assert len(chat_calls) == 4
