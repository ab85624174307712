"""The official anthropic SDK, unmodified, against the running gateway's Messages API.

The gateway serves ``/v1/messages`` through the same pipeline as chat, in
front of the fake upstream (which speaks OpenAI chat): what the SDK parses
here is the gateway's translation, both ways, and every request leaves its
ledger row as a chat request does.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pydantic
import pytest
from anthropic.types import Message, ToolParam

from budgets.ledger_row import LedgerRow
from budgets.ledger_sqlite_schema import from_record
from budgets.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE, tiktoken_count
from tests.e2e.conftest import Process

# What the fake answers by default: 20 words cycling through five, one token each.
EXPECTED_TEXT = " ".join(["Hello from the fake upstream."] * 4)
USER: list[Any] = [{"role": "user", "content": "Say hello please"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
Requests = Callable[[str], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def claude(gateway: Process, api_key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=20.0) as sdk:
        yield sdk


def marker() -> str:
    return f"marker-{secrets.token_hex(6)}"


def ledger_row(gateway: Process, request_id: str, timeout_s: float = 10.0) -> LedgerRow:
    """The request's row in the gateway's embedded SQLite ledger (in its working directory), once written."""
    path = Path(gateway.log).parent / "sluicegate-ledger.sqlite"
    query = "SELECT * FROM ledger WHERE request_id = ?"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.OperationalError):  # the file or table not written yet
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
                db.row_factory = sqlite3.Row
                row = db.execute(query, (request_id,)).fetchone()
            if row is not None:
                return from_record(row)
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} is not in {path} after {timeout_s} s")


def ledger_size(gateway: Process) -> int:
    path = Path(gateway.log).parent / "sluicegate-ledger.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
        count: int = db.execute("SELECT count(*) FROM ledger").fetchone()[0]
    return count


def request_id(message: Message) -> str:
    assert message.id.startswith("msg_")
    return message.id.removeprefix("msg_")


# --- messages.create ----------------------------------------------------------------------


def test_create_answers_a_message_and_leaves_a_ledger_row(claude: anthropic.Anthropic, gateway: Process) -> None:
    raw = claude.messages.with_raw_response.create(model="fake-model", max_tokens=64, messages=USER)
    message = raw.parse()
    assert (message.type, message.role, message.model) == ("message", "assistant", "fake-model")
    assert [(b.type, b.text) for b in message.content] == [("text", EXPECTED_TEXT)]  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 20)
    assert raw.headers["x-request-id"] == request_id(message)
    row = ledger_row(gateway, request_id(message))
    assert (row.model, row.deployment, row.key_id, row.status, row.stream) == ("fake-model", "fake", "e2e-key", 200, False)
    assert (row.prompt_tokens, row.completion_tokens) == (3, 20)


def test_max_tokens_stops_at_max_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="fake-model", max_tokens=3, messages=USER)
    assert message.content[0].text == "Hello from the"  # type: ignore[union-attr]
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 3)


def test_system_prompt_and_settings_reach_the_upstream_as_chat(claude: anthropic.Anthropic, upstream_requests: Requests) -> None:
    tag = marker()
    message = claude.messages.create(
        model="fake-model",
        max_tokens=32,
        system=f"You are terse. {tag}",
        messages=USER,
        stop_sequences=["fake"],
        metadata={"user_id": "user-7"},
        extra_body={"top_k": 5, "temperature": 0.2},
    )
    # The fake cuts its reply at the stop string, as a model would.
    assert message.content[0].text == "Hello from the "  # type: ignore[union-attr]
    [sent] = upstream_requests(tag)
    body = sent["json"]
    assert body["messages"] == [{"role": "system", "content": f"You are terse. {tag}"}, *USER]
    assert (body["max_tokens"], body["stop"], body["user"], body["top_k"], body["temperature"]) == (32, ["fake"], "user-7", 5, 0.2)


# --- streaming --------------------------------------------------------------------------------


def test_stream_text_and_final_message(claude: anthropic.Anthropic, gateway: Process) -> None:
    with claude.messages.stream(model="fake-model", max_tokens=64, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == EXPECTED_TEXT
    assert [(b.type, b.text) for b in final.content] == [("text", EXPECTED_TEXT)]  # type: ignore[union-attr]
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("end_turn", 3, 20)
    row = ledger_row(gateway, request_id(final))
    assert (row.stream, row.prompt_tokens, row.completion_tokens, row.status) == (True, 3, 20, 200)


def test_raw_stream_is_anthropics_event_sequence(claude: anthropic.Anthropic) -> None:
    events = list(claude.messages.create(model="fake-model", max_tokens=64, messages=USER, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[2:-3] == ["content_block_delta"] * 20
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2].delta.stop_reason == "end_turn"  # type: ignore[union-attr]


def test_an_error_mid_stream_raises_from_the_stream(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info, claude.messages.stream(model="midstream", max_tokens=64, messages=USER) as stream:
        for _ in stream.text_stream:
            pass
    assert info.value.status_code == 200, "the error came in-band, after the stream began"
    anthropic_error(info.value.body, "api_error")


# --- tools --------------------------------------------------------------------------------------


def test_a_tool_round_trip(claude: anthropic.Anthropic, upstream_requests: Requests) -> None:
    tag = marker()
    question: list[Any] = [{"role": "user", "content": f"Weather in Paris? {tag}"}]
    first = claude.messages.create(model="fake-model", max_tokens=64, messages=question, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert call.type == "tool_use" and (call.name, call.input) == ("get_weather", {"city": "fake", "days": 1})
    turns: list[Any] = [
        *question,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24C"}]},
    ]
    second = claude.messages.create(model="fake-model", max_tokens=64, messages=turns, tools=[WEATHER])
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == EXPECTED_TEXT
    sent = [r["json"]["messages"] for r in upstream_requests(tag)]
    assert len(sent) == 2
    arguments = '{"city":"fake","days":1}'
    assert sent[1][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}},
        ]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24C"},
    ]  # fmt: skip


def test_a_streamed_tool_call_accumulates_its_input(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="fake-model", max_tokens=64, messages=USER, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}
    ) as stream:
        final = stream.get_final_message()
    [call] = final.content
    assert call.type == "tool_use" and call.input == {"city": "fake", "days": 1}
    assert final.stop_reason == "tool_use"


# --- structured output ------------------------------------------------------------------------


class Forecast(pydantic.BaseModel):
    city: str
    days: int
    sunny: bool


def test_parse_with_an_output_format_reaches_the_upstream_as_a_json_schema(
    claude: anthropic.Anthropic, upstream_requests: Requests
) -> None:
    tag = marker()
    parsed = claude.messages.parse(
        model="fake-model", max_tokens=64, messages=[{"role": "user", "content": f"Forecast? {tag}"}], output_format=Forecast
    )
    assert isinstance(parsed.parsed_output, Forecast), "the reply was JSON valid for the schema"
    [seen] = upstream_requests(tag)
    response_format = seen["json"]["response_format"]
    assert response_format["type"] == "json_schema"
    schema = response_format["json_schema"]["schema"]
    assert set(schema["properties"]) == {"city", "days", "sunny"} and schema["type"] == "object"


def test_an_output_config_that_is_not_a_json_schema_is_a_bad_request(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model="fake-model", max_tokens=8, messages=USER, extra_body={"output_config": {"format": {"type": "regex"}}}
        )
    anthropic_error(info.value.body, "invalid_request_error")


# --- count_tokens ------------------------------------------------------------------------------


def test_count_tokens_counts_without_calling_upstream_or_the_ledger(
    claude: anthropic.Anthropic, gateway: Process, upstream_requests: Requests
) -> None:
    tag = marker()
    before = claude.messages.create(model="fake-model", max_tokens=8, messages=USER)
    ledger_row(gateway, request_id(before))  # every earlier row is written by now
    rows = ledger_size(gateway)
    text = f"How many tokens is this? {tag}"
    counted = claude.messages.count_tokens(model="fake-model", system="Be brief.", messages=[{"role": "user", "content": text}])
    # The fake deployment is an OpenAI one: cl100k, counted as the pipeline counts a chat prompt.
    expected = tiktoken_count("Be brief.") + tiktoken_count(text) + 2 * TOKENS_PER_MESSAGE + REPLY_PRIMING
    assert counted.input_tokens == expected
    assert upstream_requests(tag) == []
    after = claude.messages.create(model="fake-model", max_tokens=8, messages=USER)
    ledger_row(gateway, request_id(after))
    assert ledger_size(gateway) == rows + 1, "count_tokens wrote a ledger row"


def test_count_tokens_counts_tool_definitions(claude: anthropic.Anthropic) -> None:
    bare = claude.messages.count_tokens(model="fake-model", messages=USER)
    with_tools = claude.messages.count_tokens(model="fake-model", messages=USER, tools=[WEATHER])
    assert with_tools.input_tokens - bare.input_tokens >= tiktoken_count(WEATHER["description"]) + tiktoken_count("get_weather")


def test_count_tokens_of_an_unknown_model_is_not_found(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=USER)


# --- errors, in Anthropic's shape ---------------------------------------------------------------


def anthropic_error(body: object, kind: str) -> str:
    assert isinstance(body, dict) and set(body) == {"type", "error"}, body
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind and isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return str(body["error"]["message"])


def test_bad_key_is_an_authentication_error(gateway: Process) -> None:
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0, timeout=20.0)
    with sdk, pytest.raises(anthropic.AuthenticationError) as info:
        sdk.messages.create(model="fake-model", max_tokens=8, messages=USER)
    assert info.value.status_code == 401
    anthropic_error(info.value.response.json(), "authentication_error")


def test_unknown_model_is_not_found(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=USER)
    assert "no-such-model" in anthropic_error(info.value.response.json(), "not_found_error")


def test_missing_max_tokens_is_a_bad_request(claude: anthropic.Anthropic) -> None:
    # The SDK insists on max_tokens itself; its generic post sends the body as it is.
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.post("/v1/messages", cast_to=Message, body={"model": "fake-model", "messages": USER})
    assert "max_tokens" in anthropic_error(info.value.response.json(), "invalid_request_error")


@pytest.mark.parametrize(
    ("model", "error", "status", "kind"),
    [
        ("ratelimited", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("overloaded", anthropic.InternalServerError, 502, "api_error"),
    ],
)
def test_upstream_failures_are_anthropics_errors(
    claude: anthropic.Anthropic, model: str, error: type[anthropic.APIStatusError], status: int, kind: str
) -> None:
    with pytest.raises(error) as info:
        claude.messages.create(model=model, max_tokens=8, messages=USER)
    assert info.value.status_code == status
    anthropic_error(info.value.response.json(), kind)


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{not json", 400, "invalid_request_error"),
        (b'{"model": "fake-model", "max_tokens": "many", "messages": []}', 400, "invalid_request_error"),
        (b'{"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "document"}]}]}',
         400, "invalid_request_error"),
    ],
)  # fmt: skip
def test_malformed_bodies_are_4xx_in_anthropics_shape(gateway: Process, api_key: str, body: bytes, status: int, kind: str) -> None:
    headers = {"x-api-key": api_key, "content-type": "application/json", "anthropic-version": "2023-06-01"}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = httpx.post(gateway.url + path, content=body, headers=headers, timeout=20.0)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        anthropic_error(response.json(), kind)


def test_x_api_key_authenticates_and_other_routes_keep_openais_shape(
    gateway: Process, api_key: str, assert_openai_error: Callable[..., dict[str, Any]]
) -> None:
    body = {"model": "fake-model", "max_tokens": 8, "messages": USER}
    answered = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": api_key}, timeout=20.0)
    assert answered.status_code == 200 and answered.json()["type"] == "message", answered.text
    refused = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": "sk-wrong"}, timeout=20.0)
    anthropic_error(refused.json(), "authentication_error")
    chat = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-wrong"}, timeout=20.0)
    assert_openai_error(chat, 401)
