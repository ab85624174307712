from __future__ import annotations

from typing import Any

import msgspec
import pytest

from core.errors import InvalidRequest
from serving.anthropic_translate import (
    to_anthropic_request,
    to_openai_response,
    to_usage,
)


def translate(**body: Any) -> dict[str, Any]:
    body.setdefault("model", "claude-test")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return to_anthropic_request(body, default_max_tokens=4096)


# --- request -----------------------------------------------------------------


def test_minimal_request_gets_default_max_tokens() -> None:
    out = translate()
    assert out == {
        "model": "claude-test",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 4096,
    }


def test_default_max_tokens_is_configurable() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert to_anthropic_request(body, default_max_tokens=77)["max_tokens"] == 77


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert translate(max_tokens=10)["max_tokens"] == 10
    assert translate(max_tokens=10, max_completion_tokens=20)["max_tokens"] == 20


@pytest.mark.parametrize("value", [0, -1, "12", True])
def test_bad_max_tokens_is_rejected(value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(max_tokens=value)
    assert info.value.param == "max_tokens"


def test_system_and_developer_messages_are_collected() -> None:
    out = translate(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "user", "content": "again"},
        ]
    )
    assert out["system"] == "Be brief.\n\nUse French."
    # the developer message in between no longer separates the two user turns
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}
    ]


def test_system_with_image_is_rejected() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(InvalidRequest) as info:
        translate(messages=[{"role": "system", "content": [image]}, {"role": "user", "content": "hi"}])
    assert info.value.param == "messages[0].content"


def test_multipart_content_with_images() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]
    out = translate(messages=[{"role": "user", "content": parts}])
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url",
    ["data:image/png,notbase64", "data:image/bmp;base64,AAAA", "ftp://example.com/a.png", "data:image/png;base64,"],
)
def test_bad_image_urls_are_rejected(url: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(InvalidRequest) as info:
        translate(messages=[{"role": "user", "content": parts}])
    assert info.value.param == "messages[0].content[0].image_url"


def test_unsupported_content_part_names_its_path() -> None:
    parts = [{"type": "text", "text": "listen"}, {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]
    with pytest.raises(InvalidRequest) as info:
        translate(messages=[{"role": "user", "content": parts}])
    assert info.value.param == "messages[0].content[1].type"


def test_tool_round_trip_history() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "22C"}]},
        {"role": "user", "content": "thanks"},
    ]
    out = translate(messages=messages)
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "22C"}]},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


def test_assistant_text_and_tool_calls_share_one_message() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
    out = translate(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "Calling f.", "tool_calls": [call]},
        ]
    )
    assert out["messages"][1]["content"] == [
        {"type": "text", "text": "Calling f."},
        {"type": "tool_use", "id": "c", "name": "f", "input": {}},
    ]


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '"text"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(InvalidRequest) as info:
        translate(messages=[{"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": [call]}])
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_message_needs_tool_call_id() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(messages=[{"role": "tool", "content": "x"}])
    assert info.value.param == "messages[0].tool_call_id"


def test_empty_assistant_message_is_dropped_and_neighbours_merge() -> None:
    out = translate(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "b"},
        ]
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(messages=[{"role": "function", "content": "x"}])
    assert info.value.param == "messages[0].role"


def test_tools_and_tool_choice() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        },
        {"type": "function", "function": {"name": "noop"}},
    ]
    out = translate(tools=tools, tool_choice="auto")
    assert out["tools"] == [
        {
            "name": "weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
        {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert out["tool_choice"] == {"type": "auto"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "weather"}}, {"type": "tool", "name": "weather"}),
    ],
)
def test_tool_choice_mapping(choice: object, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "weather"}}]
    assert translate(tools=tools, tool_choice=choice)["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_use() -> None:
    tools = [{"type": "function", "function": {"name": "weather"}}]
    assert translate(tools=tools, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert translate(tools=tools, tool_choice="required", parallel_tool_calls=False)["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    assert "tool_choice" not in translate(tools=tools, parallel_tool_calls=True)


def test_non_function_tool_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(tools=[{"type": "custom", "custom": {"name": "x"}}])
    assert info.value.param == "tools[0]"


def test_bad_tool_choice_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="sometimes")
    assert info.value.param == "tool_choice"


def test_sampling_stop_stream_and_user() -> None:
    out = translate(temperature=0.5, top_p=0.9, stop="END", stream=True, user="user-42", seed=7)
    assert out["temperature"] == 0.5
    assert out["top_p"] == 0.9
    assert out["stop_sequences"] == ["END"]
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "user-42"}
    assert "seed" not in out
    assert translate(stop=["a", "b"])["stop_sequences"] == ["a", "b"]


def test_temperature_above_anthropic_range_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(temperature=1.5)
    assert info.value.param == "temperature"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("frequency_penalty", 0.5),
        ("presence_penalty", -1),
        ("logit_bias", {"42": 10}),
        ("modalities", ["text", "audio"]),
        ("functions", [{"name": "f"}]),
    ],
)
def test_unsupported_params_are_named(name: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(**{name: value})
    assert info.value.param == name
    assert name in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n", 1),
        ("logprobs", False),
        ("response_format", {"type": "text"}),
        ("frequency_penalty", 0),
        ("modalities", ["text"]),
    ],
)
def test_harmless_defaults_of_unsupported_params_pass(name: str, value: object) -> None:
    assert translate(**{name: value})["messages"]


def test_missing_model_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        to_anthropic_request({"messages": [{"role": "user", "content": "hi"}]}, default_max_tokens=1)
    assert info.value.param == "model"


def test_empty_messages_are_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(messages=[])
    assert info.value.param == "messages"


# --- response ----------------------------------------------------------------


def anthropic_message(content: list[dict[str, Any]], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 5,
            "output_tokens": 7,
        },
    }


def test_text_response() -> None:
    message = anthropic_message([{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}])
    body, usage = to_openai_response(message, created=123)
    assert body == {
        "id": "msg_1",
        "object": "chat.completion",
        "created": 123,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 45,
            "completion_tokens": 7,
            "total_tokens": 52,
            "prompt_tokens_details": {"cached_tokens": 30},
        },
    }
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens) == (45, 7, 52, 30)


def test_tool_use_response() -> None:
    content: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
    ]
    body, _ = to_openai_response(anthropic_message(content, "tool_use"))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_1"
    assert call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert msgspec.json.decode(call["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reason_mapping(reason: str, finish: str) -> None:
    body, _ = to_openai_response(anthropic_message([{"type": "text", "text": "x"}], reason))
    assert body["choices"][0]["finish_reason"] == finish


def test_usage_without_cache_fields() -> None:
    usage = to_usage({"input_tokens": 3, "output_tokens": 4})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens) == (3, 4, 7, 0)


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "place", "strict": True, "schema": SCHEMA}},
            {"type": "json_schema", "schema": SCHEMA},
        ),
        ({"type": "json_object"}, {"type": "json_schema", "schema": {"type": "object"}}),
    ],
)
def test_response_format_becomes_structured_output(response_format: dict, expected: dict) -> None:
    assert translate(response_format=response_format)["output_config"] == {"format": expected}


def test_text_response_format_asks_for_nothing() -> None:
    assert "output_config" not in translate(response_format={"type": "text"})


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "xml"},
        "json",
        {"type": "json_schema", "json_schema": {"schema": []}},
    ],
)
def test_bad_response_format_is_a_400(response_format: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(response_format=response_format)
    assert info.value.param == "response_format"
