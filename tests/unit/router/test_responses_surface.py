"""The Responses surface without a server: decoding, the chat body, and what the openai SDK reads back.

Every Response object and stream event is validated against the SDK's own
types (``openai.types.responses``), and a stream is also fed to the SDK's
stream accumulator (what ``client.responses.stream`` uses), which refuses
events out of order.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pydantic
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from bench.fake_replies import Reply
from bench.fake_streams import chat_events
from core.errors import InvalidRequest, UpstreamTimeout
from router.responses_render import ResponseHead
from router.responses_stream import ResponsesRenderer
from router.responses_surface import chat_body, chat_messages, echo, input_items
from router.responses_wire import ResponsesRequest, decode_request
from serving.base import Usage

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def decoded(**body: Any) -> ResponsesRequest:
    return decode_request(msgspec.json.encode({"model": "m", **body}))[0]


def refused(**body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_request(msgspec.json.encode({"model": "m", **body}))
    return info.value


def renderer(**body: Any) -> ResponsesRenderer:
    request = decoded(input="hi", **body)
    return ResponsesRenderer(ResponseHead("resp_r1", 1_700_000_000, "m", echo(request)))


def ctx(usage: Usage | None = None) -> Any:
    return SimpleNamespace(usage=usage, deployment="d")


# The API echoes `store` in a Response; this SDK release does not model it (its models keep unknown fields).
KNOWN_TO_API = {"store"}


def valid_response(obj: dict[str, Any]) -> Response:
    known = {f.alias or name for name, f in Response.model_fields.items()} | KNOWN_TO_API
    assert set(obj) <= known, "a field the SDK does not know"
    return Response.model_validate(obj)


# --- decoding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "named"),
    [
        ({"input": "x", "tools": [{"type": "web_search_preview"}]}, "tools[0].type", "web_search_preview"),
        ({"input": "x", "tools": [WEATHER, {"type": "file_search", "vector_store_ids": []}]}, "tools[1].type", "file_search"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type", "reasoning"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "item_reference"),
        ({"input": "x", "conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({"input": "x", "background": True}, "background", "Background"),
    ],
)
def test_what_the_gateway_does_not_serve_is_a_400_that_names_it(body: dict[str, Any], param: str, named: str) -> None:
    error = refused(**body)
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")
    assert named in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": 5}, "input"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": "maybe"}, "tool_choice"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "previous_response_id": 7}, "previous_response_id"),
    ],
)
def test_wrong_types_name_the_param(body: dict[str, Any], param: str) -> None:
    error = refused(**body)
    assert (error.status, error.param) == (400, param)


def test_images_without_a_url_and_refusals_from_a_user_are_refused() -> None:
    request = decoded(input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}])
    with pytest.raises(InvalidRequest) as info:
        input_items(request, "r")
    assert info.value.param == "input[0].content[0].image_url"
    request = decoded(input=[{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}])
    with pytest.raises(InvalidRequest):
        input_items(request, "r")


def test_unknown_fields_are_counted_and_dropped() -> None:
    request, unknown = decode_request(b'{"model":"m","input":"hi","reasoning":{"effort":"low"},"include":[]}')
    assert unknown == 2
    assert "reasoning" not in chat_body(request, input_items(request, "r"))


# --- request --> chat body -------------------------------------------------------------


def test_a_string_input_and_instructions_become_system_and_user_messages() -> None:
    request = decoded(input="Say hi", instructions="Be brief.", max_output_tokens=5, temperature=0.5, top_p=0.9, user="u1")
    body = chat_body(request, input_items(request, "r"))
    assert body == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "user": "u1",
    }  # fmt: skip


def test_items_become_messages_with_tool_calls_and_results() -> None:
    request = decoded(
        input=[
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                                         {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "Rain"}]},
        ],
        stream=True,
    )  # fmt: skip
    body = chat_body(request, input_items(request, "r"))
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            CALL, {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Rain"},
    ]  # fmt: skip


def test_a_call_without_a_message_before_it_is_an_assistant_turn_of_its_own() -> None:
    call = {"call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    items = [{"type": "function_call", "id": "fc_1", **call, "status": "completed"}]
    assert chat_messages(None, items) == [{"role": "assistant", "content": None, "tool_calls": [CALL]}]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True},
            {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True}},
        ),
    ],
)
def test_text_format_becomes_response_format(fmt: dict[str, Any], expected: dict[str, Any] | None) -> None:
    request = decoded(input="x", text={"format": fmt})
    assert chat_body(request, input_items(request, "r")).get("response_format") == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ({"type": "function", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_function_tools_are_nested_as_chat_wants_them(choice: Any, expected: Any) -> None:
    request = decoded(input="x", tools=[{**WEATHER, "strict": True, "description": "d"}], tool_choice=choice, parallel_tool_calls=False)
    body = chat_body(request, input_items(request, "r"))
    function = {"name": "get_weather", "description": "d", "parameters": WEATHER["parameters"], "strict": True}
    assert body["tools"] == [{"type": "function", "function": function}]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == (expected, False)


def test_input_items_get_ids_and_keep_the_ones_they_have() -> None:
    request = decoded(input=[{"role": "user", "content": "a"}, {"type": "message", "id": "msg_kept", "role": "assistant", "content": "b"}])
    items = input_items(request, "r9")
    assert [i["id"] for i in items] == ["msg_r9_0", "msg_kept"]
    assert items[1]["content"] == [{"type": "output_text", "text": "b", "annotations": []}]


# --- chat completion --> Response ----------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return msgspec.json.encode(body)


def test_a_text_completion_is_a_completed_response_the_sdk_reads() -> None:
    r = renderer(instructions="Be brief.", temperature=0.2, metadata={"k": "v"}, text={"format": {"type": "json_object"}})
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
             "prompt_tokens_details": {"cached_tokens": 1}, "completion_tokens_details": {"reasoning_tokens": 2}}  # fmt: skip
    body = r.unary(ctx(), completion({"role": "assistant", "content": "Hello there"}, usage=usage))
    response = valid_response(msgspec.json.decode(body))
    assert (response.id, response.object, response.status, response.model) == ("resp_r1", "response", "completed", "m")
    assert response.output_text == "Hello there"
    assert (response.instructions, response.temperature, response.metadata) == ("Be brief.", 0.2, {"k": "v"})
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (3, 4, 7)
    assert (response.usage.input_tokens_details.cached_tokens, response.usage.output_tokens_details.reasoning_tokens) == (1, 2)
    assert r.final == msgspec.json.decode(body)


def test_tool_calls_become_function_call_items() -> None:
    r = renderer(tools=[WEATHER])
    body = r.unary(ctx(), completion({"role": "assistant", "content": None, "tool_calls": [CALL]}, "tool_calls"))
    response = valid_response(msgspec.json.decode(body))
    [call] = response.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments, call.id) == ("call_1", "get_weather", '{"city":"Paris"}', "fc_r1_0")
    assert response.tools[0].name == "get_weather"  # type: ignore[union-attr]


def test_finish_length_is_incomplete_and_measured_usage_stands_in() -> None:
    r = renderer(max_output_tokens=2)
    measured = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    body = r.unary(ctx(measured), completion({"role": "assistant", "content": "Hi you"}, "length"))
    response = valid_response(msgspec.json.decode(body))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 2


def test_a_refusal_is_a_refusal_part() -> None:
    r = renderer()
    response = valid_response(msgspec.json.decode(r.unary(ctx(), completion({"role": "assistant", "content": None, "refusal": "No."}))))
    assert response.output[0].content[0].type == "refusal"  # type: ignore[union-attr]


# --- chat stream --> events ------------------------------------------------------------


def stream(r: ResponsesRenderer, chunks: list[bytes], *, error: Exception | None = None) -> list[dict[str, Any]]:
    """Render SSE chat chunks; every event is checked against the SDK's types and its framing."""
    framed = b"".join(r.chunk(ctx(), c.removeprefix(b"data: ").strip()) for c in chunks if c != b"data: [DONE]\n\n")
    framed += r.end(ctx()) if error is None else r.error(ctx(), error)  # type: ignore[arg-type]
    events = []
    for block in framed.decode().split("\n\n")[:-1]:
        head, data = block.split("\n")
        event = msgspec.json.decode(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        model = EVENTS.validate_python(event)
        assert set(event) <= {f.alias or n for n, f in type(model).model_fields.items()}, event["type"]
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(EVENTS.validate_python(event))
    return events


ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up"}


def test_a_text_stream_is_the_full_event_sequence() -> None:
    r = renderer()
    events = stream(r, chat_events(ENVELOPE, Reply("Hello from the", 3, "stop"), None, 4, True))
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    final = valid_response(events[-1]["response"])
    assert final.output_text == "Hello from the"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (4, 3)
    assert r.final == events[-1]["response"]


def test_a_tool_call_stream_has_argument_events() -> None:
    r = renderer(tools=[WEATHER])
    events = stream(r, chat_events(ENVELOPE, Reply("", 0, "stop"), CALL, 4, True))
    kinds = [e["type"] for e in events]
    assert "response.content_part.added" not in kinds, "the role chunk's empty content opens no message"
    assert kinds[2:] == [
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    [call] = valid_response(events[-1]["response"]).output
    assert (call.type, call.call_id, call.name, call.arguments) == ("function_call", "call_1", "get_weather", '{"city":"Paris"}')  # type: ignore[union-attr]


def test_a_stream_cut_at_the_token_limit_is_incomplete() -> None:
    events = stream(renderer(), chat_events(ENVELOPE, Reply("Hello from", 2, "length"), None, 4, True))
    assert events[-1]["type"] == "response.incomplete"
    final = valid_response(events[-1]["response"])
    assert final.incomplete_details is not None and final.incomplete_details.reason == "max_output_tokens"
    assert final.output[0].status == "incomplete"  # type: ignore[union-attr]


def test_an_error_mid_stream_is_an_error_event_then_response_failed() -> None:
    r = renderer()
    chunks = chat_events(ENVELOPE, Reply("Hello from the", 3, "stop"), None, 4, True)[:3]
    events = stream(r, chunks, error=UpstreamTimeout("deployment d timed out"))
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "upstream_timeout"
    failed = valid_response(events[-1]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert failed.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert r.final is None, "a failed response is not stored"


def test_an_unreadable_chunk_shows_nothing() -> None:
    r = renderer()
    assert b"output_text" not in r.chunk(ctx(), b'{"choices": "nope"}')
