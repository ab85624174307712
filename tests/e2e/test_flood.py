"""One careless (or hostile) tenant sends thousands of bad requests; every tenant is still served.

The gateway runs with its default breakers and active health checks on, in
front of the fake upstream. Tenant ``noisy`` sends malformed JSON, deep
nesting, wrong types, oversized bodies, unknown models, bad keys, garbage at
the HTTP layer, and well-formed requests whose upstream attempts fail the same
way every time (a 500, a 400, an error mid-stream, a dropped connection: the
fake picks that from the prompt). Afterwards valid requests from both tenants
get 200, and no answer was ever a 500.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from router.auth import hash_api_key
from router.decode import MAX_JSON_DEPTH
from tests.e2e.conftest import Process, serve

NOISY_KEY = "sk-noisy-" + secrets.token_hex(12)
QUIET_KEY = "sk-quiet-" + secrets.token_hex(12)
CHAT = "/v1/chat/completions"
MALFORMED = 2400
CONCURRENCY = 16


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Process]:
    upstream = fake_server.url + "/v1"
    settings = {
        "server": {"host": "127.0.0.1", "log_level": "warning", "max_body_bytes": 64 * 1024},
        # Default breakers; active health checks every half second.
        "resilience": {"health_check_interval_s": 0.5, "backoff_base_s": 0.01},
        "deployments": [
            {"name": "chat", "provider": "openai", "base_url": upstream, "model": "fake-model"},
            {"name": "embed", "provider": "openai", "base_url": upstream, "model": "fake-embed"},
        ],
        "models": [{"alias": "shared", "deployments": ["chat"]}, {"alias": "embed", "deployments": ["embed"]}],
        "tenants": [
            {"id": "noisy", "keys": [{"id": "noisy-key", "hash": hash_api_key(NOISY_KEY)}]},
            {"id": "quiet", "keys": [{"id": "quiet-key", "hash": hash_api_key(QUIET_KEY)}]},
        ],
    }
    workdir = tmp_path_factory.mktemp("flood")
    proc = serve(settings, workdir)
    yield proc
    proc.stop()


def _chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "shared", "messages": [{"role": "user", "content": prompt}], **extra}


def _bad_requests() -> Iterator[tuple[str, bytes | dict[str, Any], str]]:
    """(path, body, key) for every kind of bad request, cycled."""
    deep = "[" * (MAX_JSON_DEPTH * 4) + "]" * (MAX_JSON_DEPTH * 4)
    kinds: list[tuple[str, bytes | dict[str, Any], str]] = [
        (CHAT, b'{"model": "shared", "messages": [', NOISY_KEY),
        (CHAT, b"\xff\xfe\x00 not json", NOISY_KEY),
        (CHAT, ('{"model": "shared", "messages": %s}' % deep).encode(), NOISY_KEY),
        (CHAT, ('{"model": "shared", "messages": [{"role": "user", "content": "x"}], "x": %s}' % deep).encode(), NOISY_KEY),
        (CHAT, {"model": "shared", "messages": "hello"}, NOISY_KEY),
        (CHAT, {"model": "shared", "messages": [{"role": "wizard", "content": "x"}]}, NOISY_KEY),
        (CHAT, _chat("x", max_tokens="ten"), NOISY_KEY),
        (CHAT, _chat("x", temperature=9), NOISY_KEY),
        (CHAT, {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, NOISY_KEY),
        (CHAT, _chat("x" * 70_000), NOISY_KEY),
        (CHAT, _chat("x"), "sk-not-a-key"),
        ("/v1/embeddings", {"model": "embed", "input": [[[1]]]}, NOISY_KEY),
        ("/v1/completions", {"model": "shared", "prompt": {"a": 1}}, NOISY_KEY),
        # Well-formed, but the upstream fails each one the same way every time.
        (CHAT, _chat("fake-behavior:error_500 again"), NOISY_KEY),
        (CHAT, _chat("fake-behavior:error_500 again", stream=True), NOISY_KEY),
        (CHAT, _chat("fake-behavior:error_400 context too long"), NOISY_KEY),
        (CHAT, _chat("fake-behavior:error_400 context too long", stream=True), NOISY_KEY),
        (CHAT, _chat("fake-behavior:error_midstream", stream=True), NOISY_KEY),
        (CHAT, _chat("fake-behavior:disconnect_midstream"), NOISY_KEY),
    ]
    return itertools.cycle(kinds)


def _garbage(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    for payload in (b"FROBNICATE / HTTP/1.1\r\n\r\n", b"GET /v1/models HTTP/1.1\r\nX: \x01\r\n\r\n", b"\x16\x03\x01garbage"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
            sock.recv(4096)


async def _flood(url: str) -> Counter[int]:
    statuses: Counter[int] = Counter()
    requests = _bad_requests()
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=httpx.Limits(max_connections=CONCURRENCY)) as http:

        async def worker(count: int) -> None:
            for _ in range(count):
                path, body, key = next(requests)
                headers = {"authorization": f"Bearer {key}"}
                if isinstance(body, bytes):
                    response = await http.post(path, content=body, headers={**headers, "content-type": "application/json"})
                else:
                    response = await http.post(path, json=body, headers=headers)
                await response.aread()
                statuses[response.status_code] += 1

        await asyncio.gather(*(worker(MALFORMED // CONCURRENCY) for _ in range(CONCURRENCY)))
    return statuses


def test_valid_requests_from_every_tenant_are_served_after_a_flood_of_bad_ones(flooded: Process) -> None:
    statuses = asyncio.run(_flood(flooded.url))
    _garbage(flooded.url)
    assert sum(statuses.values()) == MALFORMED
    assert not [s for s in statuses if s == 500], statuses
    # Let the active health checks run against what the flood left behind.
    asyncio.run(asyncio.sleep(1.5))
    with httpx.Client(base_url=flooded.url, timeout=30.0) as http:
        for key in (QUIET_KEY, NOISY_KEY):
            for stream in (False, True):
                response = http.post(CHAT, json=_chat("hello", stream=stream), headers={"authorization": f"Bearer {key}"})
                assert response.status_code == 200, response.text
            embedded = http.post("/v1/embeddings", json={"model": "embed", "input": "hi"}, headers={"authorization": f"Bearer {key}"})
            assert embedded.status_code == 200, embedded.text
