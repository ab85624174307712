"""The semantic cache, end to end: the official openai SDK against a gateway whose aliases cache by meaning.

Each gateway runs as a subprocess, once with the in-process vector index and
once with pgvector in PostgreSQL (``pgvector_dsn``: skipped only where no
server with the extension can be had). Embeddings come from the fake
upstream's ``words`` model, whose vectors are bags of the words an input
uses: "What is the capital of France?" and "what's the capital of france,
please" embed alike, and a different system prompt or question does not.
Two embedding deployments are configured, a cloud one and a self-hosted one;
their upstream key (read from a file) tells the fake's request log which one
was asked.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router.auth import hash_api_key
from tests.e2e.conftest import Process, free_port, gateway_config, serve
from tests.e2e.test_response_cache import ledger_row

KEYS = {tenant: f"sk-e2e-semantic-{tenant}-" + secrets.token_hex(12) for tenant in ("a", "b", "local")}
CLOUD_EMBED_KEY = "sk-embed-cloud-" + secrets.token_hex(8)
LOCAL_EMBED_KEY = "sk-embed-local-" + secrets.token_hex(8)
PRICE = {"input_per_mtok": 3_000_000, "output_per_mtok": 5_000_000}
Requests = Callable[[str], list[dict[str, Any]]]
SEMANTIC = {"mode": "semantic", "ttl_s": 300, "embedding": ["embed-cloud", "embed-local"], "threshold": 0.9}


def _settings(upstream: str, workdir: Path, dsn: str | None) -> dict[str, Any]:
    settings = gateway_config(upstream)
    cloud_key, local_key = workdir / "cloud.key", workdir / "local.key"
    cloud_key.write_text(CLOUD_EMBED_KEY)
    local_key.write_text(LOCAL_EMBED_KEY)
    settings["deployments"] += [
        {"name": "answers", "provider": "openai", "base_url": upstream, "model": "fake-normal", "price": PRICE},
        {"name": "answers-local", "provider": "openai_compatible", "base_url": upstream, "model": "fake-normal", "privacy": "self_hosted"},
        {"name": "embed-cloud", "provider": "openai", "base_url": upstream, "model": "fake-words", "api_key": {"file": str(cloud_key)}},
        {
            "name": "embed-local", "provider": "openai_compatible", "base_url": upstream, "model": "fake-words",
            "api_key": {"file": str(local_key)}, "privacy": "self_hosted",
        },
        # Nothing listens there: every embedding fails at once.
        {"name": "embed-dead", "provider": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "fake-words"},
    ]  # fmt: skip
    settings["models"] += [
        {"alias": "semantic-model", "deployments": ["answers"], "cache": SEMANTIC},
        {"alias": "semantic-tools", "deployments": ["answers"], "cache": {**SEMANTIC, "allow_tools": True, "max_turns": 3}},
        {"alias": "semantic-local", "deployments": ["answers-local"], "cache": SEMANTIC},
        {"alias": "semantic-dead-embedder", "deployments": ["answers"], "cache": {**SEMANTIC, "embedding": ["embed-dead"]}},
    ]
    settings["tenants"] += [
        {"id": "semantic-a", "keys": [{"id": "k", "hash": hash_api_key(KEYS["a"])}]},
        {"id": "semantic-b", "keys": [{"id": "k", "hash": hash_api_key(KEYS["b"])}]},
        {"id": "semantic-local", "keys": [{"id": "k", "hash": hash_api_key(KEYS["local"])}], "routing": {"self_hosted_only": True}},
    ]
    if dsn is not None:
        settings["state"] = {"postgres_dsn": dsn, "cache": {"index": "postgres"}}
    return settings


@pytest.fixture(scope="module", params=["memory", "pgvector"])
def semantic_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Process]:
    dsn = request.getfixturevalue("pgvector_dsn") if request.param == "pgvector" else None
    workdir = tmp_path_factory.mktemp(f"semantic-{request.param}")
    proc = serve(_settings(fake_server.url + "/v1", workdir, dsn), workdir)
    yield proc
    proc.stop()


@contextlib.contextmanager
def sdk(gateway: Process, tenant: str = "a") -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=20.0) as client:
        yield client


def marker() -> str:
    return "topic" + secrets.token_hex(5)


def chat(client: openai.OpenAI, messages: list[dict[str, Any]], model: str = "semantic-model", **extra: Any) -> Any:
    options = {"temperature": 0, **extra}
    return client.chat.completions.with_raw_response.create(model=model, messages=messages, **options)


def user(text: str, system: str | None = None) -> list[dict[str, Any]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def settle(gateway: Process, response: Any) -> None:
    """Wait until a miss is stored: its ledger row is written, then the entry and its vector."""
    ledger_row(gateway, response.headers["x-request-id"])
    time.sleep(0.3)


def calls(requests: Requests, mark: str, path: str) -> list[dict[str, Any]]:
    return [r for r in requests(mark) if r["path"].endswith(path)]


def test_a_paraphrase_hits_within_the_tenant_and_nowhere_else(semantic_gateway: Process, upstream_requests: Requests) -> None:
    mark = marker()
    with sdk(semantic_gateway) as client:
        first = chat(client, user(f"What is the capital of France? {mark}"))
        assert first.headers["x-sluicegate-cache"] == "miss"
        settle(semantic_gateway, first)
        again = chat(client, user(f"what's the capital of france, please ({mark})"))
    assert again.headers["x-sluicegate-cache"] == "hit"
    assert again.parse().model_dump() == first.parse().model_dump()
    assert len(calls(upstream_requests, mark, "/chat/completions")) == 1
    miss = ledger_row(semantic_gateway, first.headers["x-request-id"])
    hit = ledger_row(semantic_gateway, again.headers["x-request-id"])
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert hit.cache_entry == miss.cache_entry and hit.saved == miss.cost > 0 and hit.cost == 0
    # Another tenant asking the same, word for word, is a miss: its own answer, from the upstream.
    with sdk(semantic_gateway, "b") as other:
        theirs = chat(other, user(f"What is the capital of France? {mark}"))
    assert theirs.headers["x-sluicegate-cache"] == "miss"
    assert len(calls(upstream_requests, mark, "/chat/completions")) == 2


def test_what_differs_in_meaning_or_settings_is_a_miss(semantic_gateway: Process, upstream_requests: Requests) -> None:
    mark = marker()
    with sdk(semantic_gateway) as client:
        settle(semantic_gateway, chat(client, user(f"Name the largest planet {mark}")))
        # The system prompt is part of the conversation.
        pirate = chat(client, user(f"name the largest planets {mark}", system="Answer as a pirate"))
        another = chat(client, user(f"Name the smallest moon {mark}"))
        warmer = chat(client, user(f"name the largest planets {mark}"), temperature=0.5, seed=7)
        shaped = chat(client, user(f"name the largest planets {mark}"), response_format={"type": "json_object"})
        near = chat(client, user(f"Name the largest planets! {mark}"))
    assert pirate.headers["x-sluicegate-cache"] == "miss"
    assert another.headers["x-sluicegate-cache"] == "miss"
    assert warmer.headers["x-sluicegate-cache"] == "miss"
    assert shaped.headers["x-sluicegate-cache"] == "miss"
    assert near.headers["x-sluicegate-cache"] == "hit"


def test_tools_and_long_conversations_are_matched_exactly_only(semantic_gateway: Process) -> None:
    mark = marker()
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    turns = [
        {"role": "user", "content": f"Plan a trip {mark}"},
        {"role": "assistant", "content": "Where to?"},
        {"role": "user", "content": "To Lisbon in spring"},
    ]
    reworded = [*turns[:2], {"role": "user", "content": "to lisbon, in the spring"}]
    with sdk(semantic_gateway) as client:
        settle(semantic_gateway, chat(client, user(f"Find the weather {mark}"), tools=[tool]))
        tools_near = chat(client, user(f"find the weather! {mark}"), tools=[tool])
        tools_same = chat(client, user(f"Find the weather {mark}"), tools=[tool])
        settle(semantic_gateway, chat(client, user(f"Find the weather {mark}"), model="semantic-tools", tools=[tool]))
        tools_allowed = chat(client, user(f"find the weather! {mark}"), model="semantic-tools", tools=[tool])
        settle(semantic_gateway, chat(client, turns))
        long_near = chat(client, reworded)
        long_same = chat(client, turns)
        settle(semantic_gateway, chat(client, turns, model="semantic-tools"))
        long_allowed = chat(client, reworded, model="semantic-tools")
    assert (tools_near.headers["x-sluicegate-cache"], tools_same.headers["x-sluicegate-cache"]) == ("miss", "hit")
    assert tools_allowed.headers["x-sluicegate-cache"] == "hit"
    assert (long_near.headers["x-sluicegate-cache"], long_same.headers["x-sluicegate-cache"]) == ("miss", "hit")
    assert long_allowed.headers["x-sluicegate-cache"] == "hit"


def test_a_streamed_paraphrase_replays_as_a_stream(semantic_gateway: Process, upstream_requests: Requests) -> None:
    mark = marker()
    with sdk(semantic_gateway) as client:
        first = client.chat.completions.with_raw_response.create(
            model="semantic-model", messages=user(f"Explain photosynthesis briefly {mark}"), temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        sent = [chunk.model_dump() for chunk in first.parse()]
        settle(semantic_gateway, first)
        again = client.chat.completions.with_raw_response.create(
            model="semantic-model", messages=user(f"explain photosynthesis, briefly. {mark}"), temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        replayed = [chunk.model_dump() for chunk in again.parse()]
    assert again.headers["x-sluicegate-cache"] == "hit"
    assert replayed == sent and replayed[-1]["usage"] is not None
    assert len(calls(upstream_requests, mark, "/chat/completions")) == 1


def test_a_self_hosted_tenant_is_embedded_on_a_self_hosted_deployment(semantic_gateway: Process, upstream_requests: Requests) -> None:
    mark = marker()
    with sdk(semantic_gateway, "local") as client:
        settle(semantic_gateway, chat(client, user(f"Summarise the contract for Alice {mark}"), model="semantic-local"))
        again = chat(client, user(f"summarise the contract for alice. {mark}"), model="semantic-local")
    assert again.headers["x-sluicegate-cache"] == "hit"
    embeds = calls(upstream_requests, mark, "/embeddings")
    assert len(embeds) == 2
    assert all(r["headers"]["authorization"] == f"Bearer {LOCAL_EMBED_KEY}" for r in embeds)
    # A tenant free to use the cloud gets the first embedder named: the cloud one.
    mark = marker()
    with sdk(semantic_gateway) as client:
        chat(client, user(f"Summarise the memo {mark}"))
    assert [r["headers"]["authorization"] for r in calls(upstream_requests, mark, "/embeddings")] == [f"Bearer {CLOUD_EMBED_KEY}"]


def test_an_embedder_that_fails_leaves_the_exact_cache_working(semantic_gateway: Process) -> None:
    mark = marker()
    with sdk(semantic_gateway) as client:
        first = chat(client, user(f"Why is the sky blue {mark}"), model="semantic-dead-embedder")
        assert first.headers["x-sluicegate-cache"] == "miss"
        settle(semantic_gateway, first)
        near = chat(client, user(f"why is the sky blue? {mark}"), model="semantic-dead-embedder")
        same = chat(client, user(f"Why is the sky blue {mark}"), model="semantic-dead-embedder")
    assert (near.headers["x-sluicegate-cache"], same.headers["x-sluicegate-cache"]) == ("miss", "hit")
    text = httpx.get(semantic_gateway.url + "/metrics", timeout=5).text
    assert 'sluicegate_cache_semantic_lookups_total{model="semantic-dead-embedder",result="unavailable"}' in text


def test_semantic_lookups_are_counted(semantic_gateway: Process) -> None:
    text = httpx.get(semantic_gateway.url + "/metrics", timeout=5).text
    assert 'sluicegate_cache_semantic_lookups_total{model="semantic-model",result="hit"}' in text
    assert 'sluicegate_cache_embedding_tokens_total{deployment="embed-cloud"}' in text
