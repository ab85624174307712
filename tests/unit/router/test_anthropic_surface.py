"""The Anthropic Messages surface without a server: decoding, the chat body, and what the anthropic SDK reads back.

Every Message and stream event is validated against the SDK's own types
(``anthropic.types``), and a stream is also fed to the SDK's accumulator (what
``client.messages.stream`` uses), which refuses events out of order.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse

from bench.fake_replies import Reply
from bench.fake_streams import chat_events
from core.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from router.anthropic_surface import chat_body, count_body, error_json, error_status
from router.anthropic_surface_render import MessageHead, MessagesRenderer
from router.anthropic_wire import CountTokensRequest, MessagesRequest, decode_request
from serving.base import Usage

EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
USER = [{"role": "user", "content": "hi"}]
WEATHER = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up"}


def decoded(**body: Any) -> MessagesRequest:
    return decode_request(msgspec.json.encode({"model": "m", "max_tokens": 16, "messages": USER, **body}), MessagesRequest)[0]


def refused(body: bytes | dict[str, Any]) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    with pytest.raises(InvalidRequest) as info:
        decode_request(raw, MessagesRequest)
    return info.value


def ctx(usage: Usage | None = None) -> Any:
    return SimpleNamespace(usage=usage, deployment="d")


def renderer(stop_sequences: list[str] | None = None) -> MessagesRenderer:
    return MessagesRenderer(MessageHead("msg_r1", "m", stop_sequences or []))


# --- decoding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": USER}, "max_tokens"),
        ({"max_tokens": 5, "messages": USER}, "model"),
        ({"model": "m", "max_tokens": 0, "messages": USER}, "max_tokens"),
        ({"model": "m", "max_tokens": "5", "messages": USER}, "max_tokens"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages[0].content[0].type"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]},
         "messages[0].content[0].source.type"),
        ({"model": "m", "max_tokens": 5, "messages": USER, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         "tools[0].type"),
        ({"model": "m", "max_tokens": 5, "messages": USER, "tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"model": "m", "max_tokens": 5, "messages": USER, "tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({"model": "m", "max_tokens": 5, "messages": USER, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"model": "m", "max_tokens": 5, "messages": USER, "temperature": 1.5}, "temperature"),
        ({"model": "m", "max_tokens": 5, "messages": USER, "stop_sequences": "END"}, "stop_sequences"),
        ({"model": "m", "max_tokens": 5, "messages": USER, "metadata": {"user_id": 5}}, "metadata.user_id"),
    ],
)  # fmt: skip
def test_bad_requests_are_400s_that_name_the_param(body: dict[str, Any], param: str) -> None:
    error = refused(body)
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": 5}]}'])
def test_malformed_bodies_are_400s(raw: bytes) -> None:
    assert refused(raw).status == 400


def test_unknown_fields_are_counted_and_block_extras_ignored() -> None:
    body = {
        "model": "m", "max_tokens": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}, "service_tier": "auto",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
    }  # fmt: skip
    request, unknown = decode_request(msgspec.json.encode(body), MessagesRequest)
    assert unknown == 2
    assert chat_body(request)["messages"] == [{"role": "user", "content": "hi"}]


def test_count_tokens_needs_no_max_tokens() -> None:
    request, unknown = decode_request(msgspec.json.encode({"model": "m", "messages": USER}), CountTokensRequest)
    assert (unknown, count_body(request)) == (0, {"model": "m", "messages": USER})


# --- request --> chat body ------------------------------------------------------------------


def test_system_prompt_becomes_the_first_message() -> None:
    assert chat_body(decoded(system="Be brief."))["messages"] == [{"role": "system", "content": "Be brief."}, *USER]
    blocks = [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    assert chat_body(decoded(system=blocks))["messages"][0] == {"role": "system", "content": blocks}
    assert chat_body(decoded(system=""))["messages"] == USER


def test_sampling_settings_map_to_chat_parameters() -> None:
    request = decoded(stop_sequences=["END"], temperature=0.5, top_p=0.9, top_k=40, stream=True, metadata={"user_id": "u-1"})
    assert chat_body(request) == {
        "model": "m", "messages": USER, "max_tokens": 16, "stream": True, "stop": ["END"],
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "user": "u-1",
    }  # fmt: skip
    assert chat_body(decoded()) == {"model": "m", "messages": USER, "max_tokens": 16}


def test_images_become_image_url_parts() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    [message] = chat_body(decoded(messages=[{"role": "user", "content": content}]))["messages"]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ],
    }


def test_a_tool_round_trip_becomes_tool_calls_and_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "no data"}], "is_error": True},
            {"type": "text", "text": "Thanks"},
        ]},
    ]  # fmt: skip
    out = chat_body(decoded(messages=messages, tools=[WEATHER]))["messages"]
    assert out[1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ],
    }
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "Error: "}, {"type": "text", "text": "no data"}]},
        {"role": "user", "content": "Thanks"},
    ]


def test_an_assistant_turn_of_only_tool_calls_has_null_content() -> None:
    call = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    [_, message] = chat_body(decoded(messages=[*USER, {"role": "assistant", "content": [call]}]))["messages"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("role", "block"),
    [
        ("user", {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
        ("assistant", {"type": "tool_result", "tool_use_id": "t", "content": "x"}),
        ("assistant", {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}),
    ],
)
def test_blocks_in_the_wrong_role_are_refused(role: str, block: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_body(decoded(messages=[{"role": role, "content": [block]}]))
    assert info.value.param == "messages[0].content[0].type"


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
        ({"type": "none"}, "none", None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ],
)
def test_tool_choice_maps_to_chat(choice: dict[str, Any], expected: object, parallel: bool | None) -> None:
    body = chat_body(decoded(tools=[WEATHER], tool_choice=choice))
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"], "description": "Weather"}}
    ]
    assert body["tool_choice"] == expected
    assert body.get("parallel_tool_calls") is parallel


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in chat_body(decoded(tool_choice={"type": "any"}))


# --- chat completion --> Message ---------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None, **choice: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
    }
    if usage is not None:
        body["usage"] = usage
    return msgspec.json.encode(body)


def valid_message(raw: bytes) -> Message:
    obj = msgspec.json.decode(raw)
    assert set(obj) <= set(Message.model_fields), "a field the SDK does not know"
    return Message.model_validate(obj)


def test_a_text_completion_is_a_message() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13, "prompt_tokens_details": {"cached_tokens": 4}}
    message = valid_message(renderer().unary(ctx(), completion({"role": "assistant", "content": "Hello there"}, usage=usage)))
    assert (message.id, message.type, message.role, message.model) == ("msg_r1", "message", "assistant", "m")
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello there")]  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (6, 4, 3)


def test_a_tool_call_is_a_tool_use_block_with_parsed_input() -> None:
    raw = renderer().unary(ctx(), completion({"role": "assistant", "content": "Let me check.", "tool_calls": [CALL]}, "tool_calls"))
    message = valid_message(raw)
    text, tool = message.content
    assert (text.type, tool.type) == ("text", "tool_use")
    assert (tool.id, tool.name, tool.input) == ("call_1", "get_weather", {"city": "Paris"})  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_tool_arguments_that_are_not_an_object_are_the_upstreams_fault() -> None:
    bad = {**CALL, "function": {"name": "f", "arguments": "[1, 2"}}
    with pytest.raises(UpstreamError):
        renderer().unary(ctx(), completion({"role": "assistant", "content": None, "tool_calls": [bad]}, "tool_calls"))
    empty = {**CALL, "function": {"name": "f", "arguments": ""}}
    message = valid_message(renderer().unary(ctx(), completion({"role": "assistant", "tool_calls": [empty]}, "tool_calls")))
    assert message.content[0].input == {}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("finish", "matched", "reason", "sequence"),
    [
        ("length", None, "max_tokens", None),
        ("content_filter", None, "refusal", None),
        ("stop", "END", "stop_sequence", "END"),
        ("stop", 151643, "end_turn", None),  # vLLM's EOS token id
        ("stop", {"odd": True}, "end_turn", None),
        (None, None, "end_turn", None),
    ],
)
def test_finish_reasons_become_stop_reasons(finish: str | None, matched: object, reason: str, sequence: str | None) -> None:
    raw = renderer(["END"]).unary(ctx(), completion({"role": "assistant", "content": "x"}, finish, stop_reason=matched))  # type: ignore[arg-type]
    message = valid_message(raw)
    assert (message.stop_reason, message.stop_sequence) == (reason, sequence)


def test_usage_the_body_lacks_comes_from_the_measured_usage() -> None:
    measured = Usage(prompt_tokens=7, completion_tokens=2, total_tokens=9)
    message = valid_message(renderer().unary(ctx(measured), completion({"role": "assistant", "content": "x"})))
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 2)


def test_an_unreadable_completion_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        renderer().unary(ctx(), b'{"choices": "nope"}')


# --- chat stream --> events ------------------------------------------------------------


def stream(
    r: MessagesRenderer, chunks: list[bytes], *, error: GatewayError | None = None, usage: Usage | None = None
) -> list[dict[str, Any]]:
    """Render SSE chat chunks; every event is checked against the SDK's types and its framing."""
    framed = b"".join(r.chunk(ctx(usage), c.removeprefix(b"data: ").strip()) for c in chunks if c != b"data: [DONE]\n\n")
    framed += r.end(ctx(usage)) if error is None else r.error(ctx(usage), error)
    assert framed.endswith(b"\n\n")
    events = []
    for block in framed.decode().split("\n\n")[:-1]:
        head, data = block.split("\n")
        event = msgspec.json.decode(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        if event["type"] not in ("ping", "error"):
            model = EVENTS.validate_python(event)
            assert set(event) <= set(type(model).model_fields), event["type"]
        events.append(event)
    return events


def accumulated(events: list[dict[str, Any]]) -> Message:
    """The final Message as the SDK's ``messages.stream`` builds it from the events."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for event in events:
        if event["type"] != "ping":
            snapshot = accumulate_event(event=EVENTS.validate_python(event), current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    return Message.model_validate(snapshot.to_dict())


def test_a_text_stream_is_the_full_event_sequence() -> None:
    events = stream(renderer(), chat_events(ENVELOPE, Reply("Hello from the", 3, "stop"), None, 4, True))
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start",
        "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0]["message"]
    assert (start["id"], start["content"], start["stop_reason"], start["usage"]["input_tokens"]) == ("msg_r1", [], None, 0)
    assert events[2] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[3] == {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}
    assert events[7]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert (events[7]["usage"]["input_tokens"], events[7]["usage"]["output_tokens"]) == (4, 3)
    final = accumulated(events)
    assert [(b.type, b.text) for b in final.content] == [("text", "Hello from the")]  # type: ignore[union-attr]
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("end_turn", 4, 3)


def test_a_tool_call_stream_is_a_tool_use_block_with_json_deltas() -> None:
    events = stream(renderer(), chat_events(ENVELOPE, Reply("", 0, "stop"), CALL, 4, True))
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[2]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    assert events[3]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}
    final = accumulated(events)
    [tool] = final.content
    assert (tool.type, tool.id, tool.name, tool.input) == ("tool_use", "call_1", "get_weather", {"city": "Paris"})  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + msgspec.json.encode({**ENVELOPE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"


def test_text_then_two_calls_are_three_blocks_in_order() -> None:
    chunks = [
        _chunk({"role": "assistant", "content": "Checking"}),
        _chunk({"content": " both."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
    ]
    events = stream(renderer(), chunks, usage=Usage(prompt_tokens=5, completion_tokens=9, total_tokens=14))
    starts = [(e["index"], e["content_block"]["type"]) for e in events if e["type"] == "content_block_start"]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert (starts, stops) == ([(0, "text"), (1, "tool_use"), (2, "tool_use")], [0, 1, 2])
    final = accumulated(events)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Checking both."  # type: ignore[union-attr]
    assert (final.content[1].input, final.content[2].input) == ({"x": 1}, {})  # type: ignore[union-attr]
    # No usage chunk in this stream: the usage the pipeline measured is reported.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 9)


def test_a_stream_cut_at_the_token_limit_stops_at_max_tokens() -> None:
    events = stream(renderer(), chat_events(ENVELOPE, Reply("Hello from", 2, "length"), None, 4, True))
    assert accumulated(events).stop_reason == "max_tokens"


def test_an_error_mid_stream_is_an_error_event_in_anthropics_shape() -> None:
    chunks = chat_events(ENVELOPE, Reply("Hello from the", 3, "stop"), None, 4, True)[:3]
    events = stream(renderer(), chunks, error=UpstreamTimeout("deployment d timed out"))
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "error",
    ]
    error = ErrorResponse.model_validate(events[-1])
    assert (error.type, error.error.type, error.error.message) == ("error", "timeout_error", "deployment d timed out")


def test_an_unreadable_chunk_shows_nothing() -> None:
    r = renderer()
    r.chunk(ctx(), _chunk({"role": "assistant", "content": ""}).removeprefix(b"data: ").strip())
    assert r.chunk(ctx(), b'{"choices": "nope"}') == b""


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (AuthenticationFailed("who"), 401, "authentication_error"),
        (PermissionDenied("no"), 403, "permission_error"),
        (ModelNotFound("none"), 404, "not_found_error"),
        (PayloadTooLarge("big"), 413, "invalid_request_error"),
        (RateLimited("slow down"), 429, "rate_limit_error"),
        (UpstreamRejected("nope", status=422), 422, "invalid_request_error"),
        (UpstreamError("broke"), 502, "api_error"),
        (Overloaded("busy"), 529, "overloaded_error"),
        (UpstreamTimeout("late"), 504, "timeout_error"),
    ],
)
def test_errors_take_anthropics_types_and_statuses(exc: GatewayError, status: int, kind: str) -> None:
    assert error_status(exc) == status
    body = ErrorResponse.model_validate(msgspec.json.decode(error_json(exc)))
    assert (body.type, body.error.type, body.error.message) == ("error", kind, exc.message)
