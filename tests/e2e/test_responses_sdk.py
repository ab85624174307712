"""The official OpenAI SDK's Responses API (and structured outputs) against a running gateway.

The gateway runs as a subprocess in front of the fake upstream, with tenants
of its own: the suite's tenant, another one (whose requests must never see the
first one's responses) and one used only to count ledger rows.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from pydantic import BaseModel

from router.auth import hash_api_key
from tests.e2e.conftest import API_KEY, Process, gateway_config, serve

EXPECTED_TEXT = " ".join(["Hello from the fake upstream."] * 4)
OTHER_KEY = "sk-e2e-other-" + secrets.token_hex(16)
LEDGER_KEY = "sk-e2e-ledger-" + secrets.token_hex(16)
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


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    age: int
    email: str | None
    tags: list[str]
    address: Address


@pytest.fixture(scope="module")
def responses_gateway(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Process]:
    settings = gateway_config(fake_server.url + "/v1")
    settings["tenants"] += [
        {"id": "e2e-other", "keys": [{"id": "other-key", "hash": hash_api_key(OTHER_KEY)}]},
        {"id": "e2e-ledger", "keys": [{"id": "ledger-key", "hash": hash_api_key(LEDGER_KEY)}]},
    ]
    workdir: Path = tmp_path_factory.mktemp("responses-gateway")
    proc = serve(settings, workdir)
    yield proc
    proc.stop()


def _sdk(gateway: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=20.0)


@pytest.fixture(scope="module")
def client(responses_gateway: Process) -> Iterator[openai.OpenAI]:
    with _sdk(responses_gateway, API_KEY) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def other(responses_gateway: Process) -> Iterator[openai.OpenAI]:
    with _sdk(responses_gateway, OTHER_KEY) as sdk:
        yield sdk


@pytest.fixture
async def aclient(responses_gateway: Process) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=responses_gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=20.0)
    yield sdk
    await sdk.close()


def _messages(recorded: Recorded, marker: str) -> list[dict[str, Any]]:
    [seen] = recorded(marker)
    return list(seen["json"]["messages"])


# --- create ----------------------------------------------------------------------------


def test_plain_text(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake-model", input="Say hello please")
    assert (response.object, response.status, response.model) == ("response", "completed", "fake-model")
    assert response.id.startswith("resp_")
    assert response.output_text == EXPECTED_TEXT
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (3, 20, 23)


def test_item_input_with_instructions_reaches_the_upstream_as_chat(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "items-" + secrets.token_hex(6)
    response = client.responses.create(
        model="fake-model",
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": f"hello {marker}"}]}],
        max_output_tokens=50,
        temperature=0.3,
    )
    assert response.output_text == EXPECTED_TEXT
    assert (response.instructions, response.temperature, response.max_output_tokens) == ("Be brief.", 0.3, 50)
    [seen] = upstream_requests(marker)
    body = seen["json"]
    assert body["model"] == "fake-normal"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hello {marker}"}]
    assert (body["max_tokens"], body["temperature"]) == (50, 0.3)


def test_max_output_tokens_leaves_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake-model", input="Say hello", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Hello from the"


def test_streaming_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="fake-model", input="Say hello please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == EXPECTED_TEXT
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == EXPECTED_TEXT
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (3, 20)


def test_stream_helper_gives_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model="fake-model", input="Say hello please") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == EXPECTED_TEXT
    assert final.status == "completed"


async def test_streaming_async_and_continued_at_once(aclient: openai.AsyncOpenAI, upstream_requests: Recorded) -> None:
    marker = "stream-" + secrets.token_hex(6)
    stream = await aclient.responses.create(model="fake-model", input=f"first {marker}", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    # Stored before its last event went out: a continuation sent at once finds it.
    follow = await aclient.responses.create(model="fake-model", input="second", previous_response_id=events[-1].response.id)
    assert follow.output_text == EXPECTED_TEXT
    messages = [r["json"]["messages"] for r in upstream_requests(marker)]
    assert messages[-1] == [
        {"role": "user", "content": f"first {marker}"},
        {"role": "assistant", "content": EXPECTED_TEXT},
        {"role": "user", "content": "second"},
    ]


def test_midstream_failure_is_an_error_event_then_failed(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="midstream", input="Say hello please", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(failed.id)


# --- tools and conversations -----------------------------------------------------------


def test_function_tool_round_trip(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "tools-" + secrets.token_hex(6)
    first = client.responses.create(model="fake-model", input=f"Weather in Paris? {marker}", tools=[WEATHER])  # type: ignore[list-item]
    [call] = first.output
    assert call.type == "function_call"
    assert (call.name, call.arguments, call.status) == ("get_weather", '{"city":"fake","days":1}', "completed")
    second = client.responses.create(
        model="fake-model",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.output_text == EXPECTED_TEXT
    assert second.previous_response_id == first.id
    messages = upstream_requests(marker)[-1]["json"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == messages[2]["tool_call_id"] == call.call_id


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    with client.responses.stream(model="fake-model", input="Weather?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        arguments = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and call.arguments == arguments == '{"city":"fake","days":1}'


def test_previous_response_id_chains_a_conversation(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "chain-" + secrets.token_hex(6)
    one = client.responses.create(model="fake-model", input=f"one {marker}", instructions="Only for the first.")
    two = client.responses.create(model="fake-model", input="two", previous_response_id=one.id)
    client.responses.create(model="fake-model", input="three", previous_response_id=two.id, instructions="Now this.")
    history = upstream_requests(marker)[-1]["json"]["messages"]
    assert history == [
        {"role": "system", "content": "Now this."},  # instructions are not carried over
        {"role": "user", "content": f"one {marker}"},
        {"role": "assistant", "content": EXPECTED_TEXT},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": EXPECTED_TEXT},
        {"role": "user", "content": "three"},
    ]


# --- storage ---------------------------------------------------------------------------


def test_retrieve_list_input_items_and_delete(client: openai.OpenAI) -> None:
    created = client.responses.create(model="fake-model", input=[{"role": "user", "content": "Keep me"}], metadata={"k": "v"})
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    items = client.responses.input_items.list(created.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # type: ignore[union-attr]
    assert items.data[0].content[0].text == "Keep me"  # type: ignore[union-attr]
    assert client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    created = client.responses.create(model="fake-model", input="Forget me", store=False)
    assert created.output_text == EXPECTED_TEXT
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_another_tenant_gets_404_as_for_a_missing_response(
    client: openai.OpenAI, other: openai.OpenAI, assert_openai_error: ErrorCheck
) -> None:
    created = client.responses.create(model="fake-model", input="Mine only")
    with pytest.raises(openai.NotFoundError) as theirs:
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("resp_" + secrets.token_hex(12))
    seen, absent = assert_openai_error(theirs.value.response, 404), assert_openai_error(missing.value.response, 404)
    assert (seen["type"], seen["code"], seen["param"]) == (absent["type"], absent["code"], absent["param"])
    with pytest.raises(openai.NotFoundError) as continued:
        other.responses.create(model="fake-model", input="x", previous_response_id=created.id)
    assert assert_openai_error(continued.value.response, 404, "previous_response_id")["code"] == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    assert client.responses.retrieve(created.id).id == created.id


# --- structured outputs ----------------------------------------------------------------


def test_responses_parse_gives_the_model(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(model="fake-model", input="Who?", text_format=Person)
    person = parsed.output_parsed
    assert isinstance(person, Person) and isinstance(person.address, Address)
    assert person.tags and person.name


def test_chat_parse_gives_the_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(model="fake-model", messages=[{"role": "user", "content": "Who?"}], response_format=Person)
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and isinstance(person.address, Address)


def test_json_object_answers_an_object(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake-model", input="JSON please", text={"format": {"type": "json_object"}})
    assert msgspec.json.decode(response.output_text) == {"text": EXPECTED_TEXT}


# --- bad input, ledger, metrics --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-model", "input": "x", "tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
        ({"model": "fake-model", "input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"model": "fake-model", "input": 5}, "input"),
        ({"model": "fake-model", "input": "x", "temperature": "hot"}, "temperature"),
        ({"model": "fake-model", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        ({"model": "fake-model"}, "input"),
        ({"input": "x"}, "model"),
    ],
)
def test_bad_input_is_a_400_in_openai_shape(
    responses_gateway: Process, assert_openai_error: ErrorCheck, body: dict[str, Any], param: str
) -> None:
    response = httpx.post(responses_gateway.url + "/v1/responses", json=body, headers={"authorization": f"Bearer {API_KEY}"}, timeout=20)
    error = assert_openai_error(response, 400, param)
    assert error["type"] == "invalid_request_error"


def test_unsupported_tool_type_is_named(client: openai.OpenAI, assert_openai_error: ErrorCheck) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="fake-model", input="x", tools=[{"type": "web_search_preview"}])
    assert "web_search_preview" in assert_openai_error(info.value.response, 400, "tools[0].type")["message"]


def test_unknown_model_and_previous_response(client: openai.OpenAI, assert_openai_error: ErrorCheck) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="x")
    assert assert_openai_error(info.value.response, 404)["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="fake-model", input="x", previous_response_id="resp_nope")
    assert assert_openai_error(info.value.response, 404, "previous_response_id")["code"] == "previous_response_not_found"


def test_a_responses_request_leaves_a_ledger_row_and_a_metric(responses_gateway: Process) -> None:
    with _sdk(responses_gateway, LEDGER_KEY) as ledger_tenant:
        ledger_tenant.responses.create(model="fake-model", input="Say hello please")
    headers = {"authorization": f"Bearer {LEDGER_KEY}"}
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        usage = httpx.get(responses_gateway.url + "/v1/ledger/usage", params={"group_by": "model"}, headers=headers, timeout=10)
        assert usage.status_code == 200, usage.text
        rows = usage.json()["data"]
        if rows:
            break
        time.sleep(0.1)
    assert [(r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [("fake-model", 1, 3, 20)]
    metrics = httpx.get(responses_gateway.url + "/metrics", timeout=10).text
    assert 'sluicegate_requests_total{model="fake-model",route="responses",status="200"}' in metrics
