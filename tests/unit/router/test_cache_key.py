"""The response cache's key: every field that changes an answer changes the key, and who may see it does too.

A field missing from the key is a data leak, so the key itself is tested: for
each field of a full request, a changed value gives another key; for each
field known not to change the answer, it does not; a field nobody has heard of
is in. Object key order never matters, list order always does.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config_cache import TenantCacheConfig
from router.cache_key import cache_key, cache_scope, qualifies
from serving.base import Kind
from tests.unit.properties.strategies import json_values

SCOPE, ALIAS, DEPLOYMENT, VERSION = "tenant:acme", "gpt-4o", "azure-east", "sha256:abc"

CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ],
    "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}},
    "temperature": 0,
    "top_p": 1,
    "seed": 7,
    "n": 1,
    "max_tokens": 100,
    "max_completion_tokens": 100,
    "stop": ["\n\n"],
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {"50256": -100},
    "logprobs": False,
    "top_logprobs": 0,
    "reasoning_effort": "low",
    "modalities": ["text"],
    "audio": {"voice": "alloy", "format": "mp3"},
    "prediction": {"type": "content", "content": "4"},
    "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
    "service_tier": "default",
}

# Every field of CHAT with another value that the upstream would answer differently.
CHANGES: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [*CHAT["messages"][:3], {"role": "tool", "tool_call_id": "c1", "content": "5"}],
    "tools": [{"type": "function", "function": {"name": "sub", "parameters": {"type": "object"}}}],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "temperature": 0.2,
    "top_p": 0.9,
    "seed": 8,
    "n": 2,
    "max_tokens": 101,
    "max_completion_tokens": 99,
    "stop": ["END"],
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": 100},
    "logprobs": True,
    "top_logprobs": 3,
    "reasoning_effort": "high",
    "modalities": ["text", "audio"],
    "audio": {"voice": "echo", "format": "mp3"},
    "prediction": {"type": "content", "content": "5"},
    "verbosity": "high",
    "web_search_options": {"search_context_size": "high"},
    "service_tier": "flex",
}
INERT = {"user": "alice", "safety_identifier": "u-1", "metadata": {"team": "a"}, "store": True, "prompt_cache_key": "k"}


def key(
    body: dict[str, Any],
    kind: Kind = "chat",
    *,
    scope: str = SCOPE,
    alias: str = ALIAS,
    deployment: str = DEPLOYMENT,
    version: str = VERSION,
) -> str:
    got = cache_key(scope, alias, deployment, version, kind, body)
    assert got is not None
    return got


def with_(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(body), **changes}


def test_every_field_of_chat_is_tested() -> None:
    assert CHANGES.keys() == CHAT.keys()


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_a_field_changes_the_key(field: str) -> None:
    assert key(with_(CHAT, **{field: CHANGES[field]})) != key(CHAT)


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_removing_a_field_changes_the_key(field: str) -> None:
    body = copy.deepcopy(CHAT)
    del body[field]
    assert key(body) != key(CHAT)


def test_a_field_nobody_knows_is_in_the_key() -> None:
    assert key(with_(CHAT, some_future_knob=1)) != key(CHAT)
    assert key(with_(CHAT, some_future_knob=1)) != key(with_(CHAT, some_future_knob=2))


@pytest.mark.parametrize(
    "part, other",
    [
        ("scope", "tenant:other"),
        ("scope", "shared:acme"),
        ("alias", "gpt-4o-mini"),
        ("deployment", "azure-west"),
        ("version", "sha256:abd"),
    ],
)
def test_who_and_where_change_the_key(part: str, other: str) -> None:
    parts = {"scope": SCOPE, "alias": ALIAS, "deployment": DEPLOYMENT, "version": VERSION, part: other}
    assert key(CHAT, scope=parts["scope"], alias=parts["alias"], deployment=parts["deployment"], version=parts["version"]) != key(CHAT)


@pytest.mark.parametrize("kind", ["completion", "embedding", "responses"])
def test_kind_changes_the_key(kind: Kind) -> None:
    assert key(CHAT, kind) != key(CHAT)


def test_parts_cannot_run_into_each_other() -> None:
    assert key(CHAT, scope="tenant:a", alias="b:c") != key(CHAT, scope="tenant:a:b", alias="c")
    assert key(CHAT, deployment="d", version="1:2") != key(CHAT, deployment="d:1", version="2")


def test_object_key_order_does_not_matter() -> None:
    reordered = {name: CHAT[name] for name in reversed(list(CHAT))}
    reordered["tools"] = [
        {"function": {"parameters": {"properties": {"a": {"type": "number"}}, "type": "object"}, "name": "add"}, "type": "function"}
    ]
    reordered["response_format"] = {"json_schema": {"strict": True, "schema": {"type": "object"}, "name": "answer"}, "type": "json_schema"}
    assert key(reordered) == key(CHAT)


def test_list_order_matters() -> None:
    messages = CHAT["messages"]
    assert key(with_(CHAT, messages=[messages[1], messages[0], *messages[2:]])) != key(CHAT)
    assert key(with_(CHAT, stop=["b", "a"])) != key(with_(CHAT, stop=["a", "b"]))


def test_the_key_reveals_nothing() -> None:
    got = key(CHAT)
    assert len(got) == 64 and set(got) <= set("0123456789abcdef")
    for material in (SCOPE, "acme", ALIAS, DEPLOYMENT, "terse"):
        assert material not in got


@pytest.mark.parametrize("kind", ["chat", "completion", "embedding"])
@pytest.mark.parametrize("field", sorted(INERT))
def test_fields_that_do_not_change_the_answer_stay_out(field: str, kind: Kind) -> None:
    assert key(with_(CHAT, **{field: INERT[field]}), kind) == key(CHAT, kind)


@pytest.mark.parametrize("field", sorted(INERT))
def test_a_responses_answer_echoes_them_so_they_are_in(field: str) -> None:
    body = {"model": "gpt-4o", "input": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert key(with_(body, **{field: INERT[field]}), "responses") != key(body, "responses")


# --- the shape ---------------------------------------------------------------------------


def test_unary_and_streamed_are_two_entries() -> None:
    assert key(with_(CHAT, stream=True)) != key(CHAT)


def test_stream_false_or_null_is_unary() -> None:
    assert key(with_(CHAT, stream=False)) == key(CHAT) == key(with_(CHAT, stream=None))
    # Stream options shape only a stream.
    assert key(with_(CHAT, stream=False, stream_options={"include_usage": True})) == key(CHAT)


def test_stream_options_that_shape_the_stream_are_in() -> None:
    plain = key(with_(CHAT, stream=True))
    assert key(with_(CHAT, stream=True, stream_options={"include_usage": False})) == plain
    assert key(with_(CHAT, stream=True, stream_options=None)) == plain
    with_usage = key(with_(CHAT, stream=True, stream_options={"include_usage": True}))
    assert with_usage != plain
    # include_obfuscation defaults to true upstream: false is not the same as absent.
    assert key(with_(CHAT, stream=True, stream_options={"include_obfuscation": False})) != plain


def test_a_stream_that_is_not_a_boolean_is_not_cached() -> None:
    assert cache_key(SCOPE, ALIAS, DEPLOYMENT, VERSION, "chat", with_(CHAT, stream="yes")) is None
    assert cache_key(SCOPE, ALIAS, DEPLOYMENT, VERSION, "chat", with_(CHAT, stream=1)) is None


# --- what is never cached ----------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("background", True), ("conversation", "conv_1"), ("previous_response_id", "resp_1")])
def test_responses_naming_state_kept_elsewhere_are_not_cached(field: str, value: object) -> None:
    body = {"model": "gpt-4o", "input": "hi", "temperature": 0}
    assert cache_key(SCOPE, ALIAS, DEPLOYMENT, VERSION, "responses", with_(body, **{field: value})) is None
    assert cache_key(SCOPE, ALIAS, DEPLOYMENT, VERSION, "responses", with_(body, **{field: None})) is not None


def test_a_body_that_is_not_plain_json_is_not_cached() -> None:
    assert cache_key(SCOPE, ALIAS, DEPLOYMENT, VERSION, "chat", with_(CHAT, odd=object())) is None
    assert cache_key(SCOPE, ALIAS, DEPLOYMENT, VERSION, "chat", with_(CHAT, odd={1: "int key"})) is None


# --- properties --------------------------------------------------------------------------


def reversed_objects(value: Any) -> Any:
    """``value`` with the keys of every object in reverse order."""
    if isinstance(value, dict):
        return {name: reversed_objects(value[name]) for name in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_objects(item) for item in value]
    return value


canonical = msgspec.json.Encoder(order="sorted").encode
bodies = st.dictionaries(
    st.text(max_size=12).filter(lambda name: name not in INERT and name not in ("stream", "stream_options")), json_values, max_size=8
)


@given(bodies)
def test_key_order_never_matters(body: dict[str, Any]) -> None:
    assert cache_key(SCOPE, ALIAS, DEPLOYMENT, VERSION, "chat", reversed_objects(body)) == cache_key(
        SCOPE, ALIAS, DEPLOYMENT, VERSION, "chat", body
    )


@given(bodies, st.text(max_size=12), json_values, json_values)
def test_any_changed_value_changes_the_key(body: dict[str, Any], field: str, before: Any, after: Any) -> None:
    # Values the upstream receives alike (the same object in another key order; infinity, which goes as null) may share a key.
    if field in INERT or field in ("stream", "stream_options") or canonical(before) == canonical(after):
        return
    assert key({**body, field: before}) != key({**body, field: after})


# --- qualifying and scope ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"seed": 0}, True),
        ({"seed": 42, "temperature": 1.2}, True),
        ({}, False),
        ({"temperature": 0.7}, False),
        ({"temperature": None, "seed": None}, False),
        ({"temperature": False}, False),
        ({"seed": True}, False),
        ({"seed": "1"}, False),
    ],
)
def test_deterministic_requests_qualify(body: dict[str, Any], expected: bool) -> None:
    assert qualifies(body, "deterministic", kind="chat") is expected
    assert qualifies(body, "deterministic", kind="completion") is expected
    assert qualifies(body, "always", kind="chat") is True


def test_embeddings_always_qualify() -> None:
    assert qualifies({"input": "hi"}, "deterministic", kind="embedding")


def test_scope_is_the_tenant_unless_it_opts_into_a_shared_one() -> None:
    assert cache_scope("acme", None, self_hosted_only=False) == "tenant:acme"
    assert cache_scope("acme", TenantCacheConfig(), self_hosted_only=False) == "tenant:acme"
    assert cache_scope("acme", TenantCacheConfig(scope="team"), self_hosted_only=False) == "shared:team"
    # A shared scope named like a tenant is still not that tenant's scope.
    assert cache_scope("acme", TenantCacheConfig(scope="acme"), self_hosted_only=False) != cache_scope("acme", None, False)


def test_a_tenant_that_opted_out_has_no_scope() -> None:
    assert cache_scope("acme", TenantCacheConfig(enabled=False, scope="team"), self_hosted_only=False) is None


def test_a_self_hosted_only_request_never_shares() -> None:
    assert cache_scope("acme", TenantCacheConfig(scope="team"), self_hosted_only=True) == "tenant:acme"
