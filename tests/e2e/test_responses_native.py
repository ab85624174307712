"""The Responses API passed through to an upstream that has it, with the unmodified openai SDK.

The gateway runs as a subprocess in front of the fake upstream, whose
``/v1/responses`` records what reached it. Its aliases route to deployments
marked ``options: {responses: native}``, alone, with a translated fallback,
and after a translated one. Tenants: the suite's (PII redacted), another one
(which must never see the first one's responses), one under
``mask_and_restore`` and one used only to read its ledger rows.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from pydantic import BaseModel

from router.auth import hash_api_key
from tests.e2e.conftest import API_KEY, UPSTREAM_KEY, UPSTREAM_KEY_ENV, Process, gateway_config, serve

EXPECTED_TEXT = " ".join(["Hello from the fake upstream."] * 4)
OTHER_KEY = "sk-e2e-native-other-" + secrets.token_hex(16)
MASK_KEY = "sk-e2e-native-mask-" + secrets.token_hex(16)
LEDGER_KEY = "sk-e2e-native-ledger-" + secrets.token_hex(16)
EMAIL = "jane.doe@example.com"
PII = {"action": "redact", "entities": ["EMAIL_ADDRESS"]}
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 2000, "cached_input_per_mtok": 500}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
Recorded = Callable[[str], list[dict[str, Any]]]
ErrorCheck = Callable[..., dict[str, Any]]


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


def _native(name: str, upstream: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "base_url": upstream, "model": model, "options": {"responses": "native"}, **extra}


@pytest.fixture(scope="module")
def native_gateway(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Process]:
    upstream = fake_server.url + "/v1"
    settings = gateway_config(upstream)
    settings["deployments"] += [
        _native("native", upstream, "fake-normal", api_key={"env": UPSTREAM_KEY_ENV}, price=PRICE),
        _native("native-broken", upstream, "error_503"),
        _native("native-midstream", upstream, "error_midstream"),
        _native("native-echo", upstream, "echo"),
    ]
    settings["models"] += [
        {"alias": "native-model", "deployments": ["native"]},
        {"alias": "native-fallback", "deployments": ["native-broken", "fake-second"]},
        {"alias": "translated-first", "deployments": ["fake-second", "native"]},
        {"alias": "native-midstream", "deployments": ["native-midstream"]},
        {"alias": "native-echo", "deployments": ["native-echo"]},
    ]
    settings["tenants"] = [
        {"id": "e2e", "keys": [{"id": "e2e-key", "hash": hash_api_key(API_KEY)}], "pii": PII},
        {"id": "e2e-other", "keys": [{"id": "other-key", "hash": hash_api_key(OTHER_KEY)}]},
        {"id": "e2e-mask", "keys": [{"id": "mask-key", "hash": hash_api_key(MASK_KEY)}], "pii": {**PII, "action": "mask_and_restore"}},
        {"id": "e2e-native-ledger", "keys": [{"id": "ledger-key", "hash": hash_api_key(LEDGER_KEY)}]},
    ]
    workdir: Path = tmp_path_factory.mktemp("native-gateway")
    proc = serve(settings, workdir)
    yield proc
    proc.stop()


def _sdk(gateway: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=20.0)


@pytest.fixture(scope="module")
def client(native_gateway: Process) -> Iterator[openai.OpenAI]:
    with _sdk(native_gateway, API_KEY) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def other(native_gateway: Process) -> Iterator[openai.OpenAI]:
    with _sdk(native_gateway, OTHER_KEY) as sdk:
        yield sdk


def _sent(recorded: Recorded, marker: str) -> dict[str, Any]:
    """The last request that reached the upstream mentioning ``marker``."""
    seen = recorded(marker)
    assert seen, f"nothing mentioning {marker} reached the upstream"
    return dict(seen[-1])


# --- create ----------------------------------------------------------------------------


def test_the_request_reaches_the_upstream_as_a_responses_request(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "native-" + secrets.token_hex(6)
    response = client.responses.create(
        model="native-model",
        input=f"Hello {marker}",
        instructions="Be brief.",
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        tools=[{"type": "web_search"}],
        text={"verbosity": "low"},
        metadata={"k": "v"},
        max_output_tokens=100,
    )
    seen = _sent(upstream_requests, marker)
    assert seen["path"] == "/v1/responses"
    assert seen["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    body = seen["json"]
    assert (body["model"], body["store"], body["instructions"]) == ("fake-normal", False, "Be brief.")
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"Hello {marker}"}], "status": "completed"}
    ]
    assert body["reasoning"] == {"effort": "low", "summary": "auto"} and body["include"] == ["reasoning.encrypted_content"]
    assert body["tools"] == [{"type": "web_search"}] and body["text"]["verbosity"] == "low"
    assert "metadata" not in body and "previous_response_id" not in body
    # The client's Response: the gateway's id and the alias; the upstream's output.
    assert response.id.startswith("resp_") and not response.id.startswith("resp_fake")
    assert (response.model, response.status, response.metadata, response.instructions) == (
        "native-model",
        "completed",
        {"k": "v"},
        "Be brief.",
    )
    assert [item.type for item in response.output] == ["reasoning", "web_search_call", "message"]
    assert response.output_text == EXPECTED_TEXT
    # Words are tokens at the fake: instructions and input, the answer and the reasoning summary.
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (4, 23)


def test_streaming_relays_the_typed_events_and_stores_the_response(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="native-model", input="Say hello please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == EXPECTED_TEXT
    final = events[-1].response  # type: ignore[union-attr]
    assert {e.response.id for e in events if e.type.startswith("response.") and hasattr(e, "response")} == {final.id}
    assert (final.model, final.output_text) == ("native-model", EXPECTED_TEXT)
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_stream_helper_gives_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model="native-model", input="Say hello please", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        arguments = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and call.arguments == arguments == '{"city":"fake","days":1}'


def test_function_tool_round_trip_expands_the_conversation_locally(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "native-tools-" + secrets.token_hex(6)
    first = client.responses.create(model="native-model", input=f"Weather in Paris? {marker}", tools=[WEATHER])  # type: ignore[list-item]
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    second = client.responses.create(
        model="native-model",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.output_text == EXPECTED_TEXT and second.previous_response_id == first.id
    body = _sent(upstream_requests, marker)["json"]
    assert body["store"] is False and "previous_response_id" not in body
    user, function_call, output = body["input"]
    assert (user["role"], "id" in user) == ("user", False)
    assert (function_call["type"], function_call["id"], function_call["call_id"]) == ("function_call", call.id, call.call_id)
    assert output == {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}', "status": "completed"}
    items = client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]


def test_reasoning_items_go_back_only_with_their_encrypted_content(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "native-reasoning-" + secrets.token_hex(6)
    kept = client.responses.create(
        model="native-model", input=f"think {marker}", reasoning={"effort": "low"}, include=["reasoning.encrypted_content"]
    )
    client.responses.create(model="native-model", input="again", previous_response_id=kept.id)
    assert [i["type"] for i in _sent(upstream_requests, marker)["json"]["input"]] == ["message", "reasoning", "message", "message"]
    marker = "native-opaque-" + secrets.token_hex(6)
    opaque = client.responses.create(model="native-model", input=f"think {marker}", reasoning={"effort": "low"})
    again = client.responses.create(model="native-model", input="again", previous_response_id=opaque.id)
    assert again.status == "completed"  # the fake, as OpenAI, refuses a reasoning item it cannot find
    assert [i["type"] for i in _sent(upstream_requests, marker)["json"]["input"]] == ["message", "message", "message"]


def test_responses_parse_gives_the_model(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "native-parse-" + secrets.token_hex(6)
    parsed = client.responses.parse(model="native-model", input=f"Who? {marker}", text_format=Person)
    assert isinstance(parsed.output_parsed, Person) and parsed.output_parsed.tags
    assert _sent(upstream_requests, marker)["json"]["text"]["format"]["type"] == "json_schema"


def test_store_false_is_relayed_and_keeps_nothing(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "native-forget-" + secrets.token_hex(6)
    created = client.responses.create(model="native-model", input=f"Forget me {marker}", store=False)
    assert created.output_text == EXPECTED_TEXT and _sent(upstream_requests, marker)["json"]["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


# --- privacy and tenancy -------------------------------------------------------------------


def test_pii_is_redacted_in_what_reaches_the_upstream(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "native-pii-" + secrets.token_hex(6)
    tool: Any = {**WEATHER, "description": f"Ask {EMAIL} first."}
    response = client.responses.create(
        model="native-model",
        instructions=f"The user is {EMAIL}.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": f"Mail {EMAIL} {marker}"}]}],
        tools=[tool],
        tool_choice="none",
    )
    seen = _sent(upstream_requests, marker)
    assert EMAIL not in msgspec.json.encode(seen["json"]).decode()
    body = seen["json"]
    assert body["input"][0]["content"][0]["text"] == f"Mail <EMAIL_ADDRESS_1> {marker}"
    assert body["instructions"] == "The user is <EMAIL_ADDRESS_1>."
    assert body["tools"][0]["description"] == "Ask <EMAIL_ADDRESS_1> first."
    # The client's own settings come back as it sent them.
    assert response.instructions == f"The user is {EMAIL}."
    assert response.tools[0].description == f"Ask {EMAIL} first."  # type: ignore[union-attr]


def test_mask_and_restore_gives_a_stream_its_values_back(native_gateway: Process, upstream_requests: Recorded) -> None:
    marker = "native-mask-" + secrets.token_hex(6)
    text = f"Write to {EMAIL} today {marker}"  # the fake echoes it in pieces of 4 characters
    with _sdk(native_gateway, MASK_KEY) as masked:
        events = list(masked.responses.create(model="native-echo", input=text, stream=True))
        unary = masked.responses.create(model="native-echo", input=text)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == text and not any("<" in d for d in deltas)  # the placeholder was split over deltas
    assert events[-1].response.output_text == text  # type: ignore[union-attr]
    assert unary.output_text == text
    assert all(EMAIL not in msgspec.json.encode(r["json"]).decode() for r in upstream_requests(marker))


def test_another_tenant_never_sees_a_native_response(client: openai.OpenAI, other: openai.OpenAI, assert_openai_error: ErrorCheck) -> None:
    created = client.responses.create(model="native-model", input="Mine only")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError) as continued:
        other.responses.create(model="native-model", input="x", previous_response_id=created.id)
    assert assert_openai_error(continued.value.response, 404, "previous_response_id")["code"] == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    assert client.responses.retrieve(created.id).output_text == EXPECTED_TEXT


def test_the_ledger_bills_the_native_usage(native_gateway: Process) -> None:
    with _sdk(native_gateway, LEDGER_KEY) as ledger_tenant:
        unary = ledger_tenant.responses.create(model="native-model", input="one two three four five six", prompt_cache_key="k")
        events = list(ledger_tenant.responses.create(model="native-model", input="one two", stream=True))
    streamed = events[-1].response.usage  # type: ignore[union-attr]
    assert unary.usage is not None and streamed is not None
    assert (unary.usage.input_tokens, unary.usage.input_tokens_details.cached_tokens, unary.usage.output_tokens) == (6, 3, 20)
    assert (streamed.input_tokens, streamed.input_tokens_details.cached_tokens, streamed.output_tokens) == (2, 0, 20)
    rows = _ledger_rows(native_gateway, LEDGER_KEY, expected=2)
    cost = (6 - 3) * PRICE["input_per_mtok"] + 3 * PRICE["cached_input_per_mtok"] + 20 * PRICE["output_per_mtok"]
    cost += 2 * PRICE["input_per_mtok"] + 20 * PRICE["output_per_mtok"]
    [row] = rows
    assert (row["deployment"], row["requests"], row["prompt_tokens"], row["completion_tokens"]) == ("native", 2, 8, 40)
    assert (row["cached_tokens"], row["cost_pico_usd"], row["errors"]) == (3, cost, 0)


def _ledger_rows(gateway: Process, key: str, expected: int) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        usage = httpx.get(gateway.url + "/v1/ledger/usage", params={"group_by": "deployment"}, headers=headers, timeout=10)
        assert usage.status_code == 200, usage.text
        rows = usage.json()["data"]
        if sum(r["requests"] for r in rows) >= expected:
            return rows
        time.sleep(0.1)
    return rows


# --- routing: fallback, mixed aliases, failures ------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_deployment_failing_over_to_a_translated_one_still_answers_a_response(
    client: openai.OpenAI, upstream_requests: Recorded, stream: bool
) -> None:
    marker = "native-fallback-" + secrets.token_hex(6)
    raw = client.responses.with_raw_response.create(model="native-fallback", input=f"Hello {marker}", stream=stream)
    assert raw.headers["x-sluicegate-deployment"] == "fake-second"
    parsed: Any = raw.parse()
    response = list(parsed)[-1].response if stream else parsed
    assert (response.model, response.status, response.output_text) == ("native-fallback", "completed", EXPECTED_TEXT)
    paths = [r["path"] for r in upstream_requests(marker)]
    assert paths == ["/v1/responses", "/v1/chat/completions"]
    assert client.responses.retrieve(response.id).output_text == EXPECTED_TEXT


def test_a_native_conversation_continues_on_a_translated_alias(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "native-then-chat-" + secrets.token_hex(6)
    first = client.responses.create(
        model="native-model", input=f"Look it up {marker}", tools=[{"type": "web_search"}], reasoning={"effort": "low"}
    )
    assert [i.type for i in first.output] == ["reasoning", "web_search_call", "message"]
    second = client.responses.create(model="fake-model", input="And then?", previous_response_id=first.id)
    assert second.output_text == EXPECTED_TEXT
    messages = _sent(upstream_requests, marker)["json"]["messages"]
    assert messages == [
        {"role": "user", "content": f"Look it up {marker}"},
        {"role": "assistant", "content": EXPECTED_TEXT},
        {"role": "user", "content": "And then?"},
    ]


def test_built_in_tools_are_planned_on_the_native_deployment_only(client: openai.OpenAI, assert_openai_error: ErrorCheck) -> None:
    plain = client.responses.with_raw_response.create(model="translated-first", input="Hello")
    assert plain.headers["x-sluicegate-deployment"] == "fake-second"
    searched = client.responses.with_raw_response.create(model="translated-first", input="Hello", tools=[{"type": "web_search"}])
    assert searched.headers["x-sluicegate-deployment"] == "native"
    assert [i.type for i in searched.parse().output] == ["web_search_call", "message"]
    with pytest.raises(openai.BadRequestError) as info:  # an alias without a native deployment refuses as before
        client.responses.create(model="fake-model", input="Hello", tools=[{"type": "web_search"}])
    assert "web_search" in assert_openai_error(info.value.response, 400, "tools[0].type")["message"]


def test_a_native_stream_failing_midway_ends_with_error_then_failed(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="native-midstream", input="Say hello please", stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(failed.id)
