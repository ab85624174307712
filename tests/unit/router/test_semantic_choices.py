"""The semantic cache's choices: which conversations are embedded, by whom, and what counts as a vector."""

from __future__ import annotations

import base64
import struct
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from core.config_cache import CacheConfig
from router.cache_key import cache_key, semantic_partition
from router.semantic_cache import _vector, conversation_text, embedder

CONFIG = CacheConfig(mode="semantic", embedding=("e",))


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


def test_the_whole_conversation_is_embedded_system_prompt_included() -> None:
    body = chat({"role": "system", "content": "Be brief"}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]})
    assert conversation_text("chat", body, CONFIG) == "system: Be brief\nuser: Hi"
    assert conversation_text("completion", {"prompt": ["Once upon"]}, CONFIG) == "Once upon"
    assert conversation_text("embedding", {"input": "x"}, CONFIG) is None


@pytest.mark.parametrize(
    "body",
    [
        chat({"role": "user", "content": "a"}, tools=[{"type": "function"}]),
        chat({"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{"id": "1"}]}),
        chat({"role": "tool", "content": "42", "tool_call_id": "1"}),
        chat({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}),
        chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
        chat({"role": "user", "content": "x" * (CONFIG.max_chars + 1)}),
        chat(),
        {"messages": "not a list"},
        chat({"role": 5, "content": "a"}),
        {"prompt": ["two", "prompts"]},
    ],
)
def test_what_only_an_exact_match_may_serve(body: dict[str, Any]) -> None:
    kind = "completion" if "prompt" in body else "chat"
    assert conversation_text(kind, body, CONFIG) is None


def test_an_alias_may_allow_tools_and_more_turns() -> None:
    config = CacheConfig(mode="semantic", embedding=("e",), allow_tools=True, max_turns=2)
    body = chat(
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "w"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "1"},
        {"role": "user", "content": "thanks"},
        tools=[{"type": "function"}],
    )
    text = conversation_text("chat", body, config)
    assert text is not None and '"name":"w"' in text and "tool: sunny" in text


def test_a_partition_is_the_key_without_the_conversation() -> None:
    one = {"messages": [{"role": "user", "content": "a"}], "temperature": 0}
    two = {"messages": [{"role": "user", "content": "b"}], "temperature": 0}
    assert semantic_partition("m", "d", "v", "chat", one) == semantic_partition("m", "d", "v", "chat", two)
    assert semantic_partition("m", "d", "v", "chat", one) != semantic_partition("m", "d", "v", "chat", {**one, "seed": 1})
    assert semantic_partition("m", "d", "v", "chat", one) != semantic_partition("m", "d", "v2", "chat", one)
    assert semantic_partition("m", "d", "v", "chat", one) != semantic_partition("m", "d", "v", "chat", {**one, "stream": True})
    assert semantic_partition("m", "d", "v", "chat", {**one, "stream": "yes"}) is None
    partition = semantic_partition("m", "d", "v", "chat", one)
    assert partition is not None and cache_key("", "m", "d", "v", "chat", {"temperature": 0}) in partition


def _deployment(name: str, privacy: str) -> Any:
    return SimpleNamespace(name=name, config=SimpleNamespace(privacy=privacy))


def _ctx(cloud_body: dict[str, Any] | None, *deployments: Any, failed: frozenset[str] = frozenset()) -> Any:
    body = {"messages": []}

    def source(deployment: Any) -> dict[str, Any]:
        return body if cloud_body is None or deployment.config.privacy == "self_hosted" else cloud_body

    return SimpleNamespace(snapshot=SimpleNamespace(deployments={d.name: d for d in deployments}, failed=failed), source=source)


def test_the_first_embedder_that_may_see_the_keyed_body_is_chosen() -> None:
    cloud, local = _deployment("cloud", "cloud"), _deployment("local", "self_hosted")
    config = CacheConfig(mode="semantic", embedding=("cloud", "local"))
    answers_cloud, answers_local = _deployment("answers", "cloud"), _deployment("answers-local", "self_hosted")
    # No PII step: a cloud embedder sees what any deployment sees.
    assert embedder(_ctx(None, cloud, local), config, answers_cloud, restricted=False) is cloud
    # The tenant may reach self-hosted deployments only.
    assert embedder(_ctx(None, cloud, local), config, answers_local, restricted=True) is local
    # PII was taken out for cloud deployments: a cloud embedder may embed the cloud body, never the unmasked one.
    masked = {"messages": [{"role": "user", "content": "<PERSON_1>"}]}
    assert embedder(_ctx(masked, cloud, local), config, answers_cloud, restricted=False) is cloud
    assert embedder(_ctx(masked, cloud, local), config, answers_local, restricted=False) is local
    # None may: an exact lookup only.
    assert embedder(_ctx(masked, cloud), CacheConfig(mode="semantic", embedding=("cloud",)), answers_local, restricted=False) is None
    assert embedder(_ctx(None, cloud, local, failed=frozenset({"local"})), config, answers_local, restricted=True) is None


def test_an_embeddings_reply_gives_one_finite_vector_or_none() -> None:
    def reply(*vectors: Any) -> bytes:
        return msgspec.json.encode({"data": [{"embedding": v} for v in vectors]})

    assert _vector(reply([0.5, -1.0])) == [0.5, -1.0]
    packed = base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()
    assert _vector(reply(packed)) == [0.5, -1.0]
    for bad in (reply(), reply([1.0], [2.0]), reply([]), reply([0.0, 0.0]), reply("not base64!"), reply("AAA="), b"{", b"[]"):
        assert _vector(bad) is None
    assert _vector(b'{"data": [{"embedding": [1e999]}]}') is None
