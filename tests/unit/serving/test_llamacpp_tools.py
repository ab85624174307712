"""llama.cpp request and reply mapping for tools and structured outputs (llamacpp_request, llamacpp_tools)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import InvalidRequest
from serving.llamacpp_options import LlamaCppOptions
from serving.llamacpp_request import chat_kwargs, chat_messages
from serving.llamacpp_tools import ToolChunks, with_tool_calls
from serving.tool_call_hermes import HermesCalls
from serving.tool_call_text import ForcedCalls

TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
]
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}],
}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
USER = {"role": "user", "content": "Weather in Paris?"}


def _kwargs(options: LlamaCppOptions | None = None, **body: Any) -> tuple[dict[str, Any], Any]:
    return chat_kwargs({"messages": [USER], **body}, options or LlamaCppOptions(), False)


# --- request ---------------------------------------------------------------------------------


def test_tool_calls_render_natively_or_as_hermes_text() -> None:
    native = chat_messages([USER, CALLED, RESULT], True)
    assert native[1]["content"] == "" and native[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    as_text = chat_messages([USER, CALLED, RESULT], False)
    assert "tool_calls" not in as_text[1]
    assert as_text[1]["content"] == '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert as_text[0] is USER and as_text[2] is RESULT


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        ([], "messages"),
        ([USER, {"content": "no role"}], "messages[1]"),
        ([USER, {"role": "tool", "content": "orphan"}], "messages[1]"),
        ([USER, {**CALLED, "tool_calls": [{"function": {"name": "weather", "arguments": "{"}}]}], "messages[1]"),
        ([USER, {**CALLED, "content": 7}], "messages[1]"),
    ],
)
def test_bad_messages_are_a_400(messages: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_messages(messages, False)
    assert caught.value.param == param


def test_tool_choice_never_reaches_llama_cpp() -> None:
    forced, reader = _kwargs(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "weather"}})
    assert "tool_choice" not in forced and forced["tools"] == TOOLS
    assert isinstance(reader, ForcedCalls) and "root ::=" in forced["grammar"]._grammar
    hidden, reader = _kwargs(tools=TOOLS, tool_choice="none")
    assert "tools" not in hidden and "grammar" not in hidden and reader is None
    # A forced call takes this turn, but a malformed response_format is still refused.
    with pytest.raises(InvalidRequest) as caught:
        _kwargs(tools=TOOLS, tool_choice="required", response_format={"type": "xml"})
    assert caught.value.param == "response_format"


def test_auto_reads_hermes_calls_only_when_the_deployment_says_so() -> None:
    assert _kwargs(tools=TOOLS)[1] is None
    assert isinstance(_kwargs(LlamaCppOptions(tool_parser="hermes"), tools=TOOLS)[1], HermesCalls)


def test_response_format_becomes_a_grammar() -> None:
    pytest.importorskip("llama_cpp")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    kwargs, _ = _kwargs(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}})
    assert "response_format" not in kwargs and "a-kv" in kwargs["grammar"]._grammar
    with pytest.raises(InvalidRequest) as caught:
        _kwargs(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer", "minimum": 1}}})
    assert caught.value.param == "response_format"


# --- reply ----------------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
    }


def test_whole_reply_gets_tool_calls() -> None:
    result: dict[str, Any] = {
        "id": "x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '[{"name":"weather","arguments":{"city":"Paris"}}]'},
                "finish_reason": "stop",
            }
        ],
        "usage": {},
    }
    fixed = with_tool_calls(result, ForcedCalls())
    choice = fixed["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert fixed["usage"] == {} and result["choices"][0]["message"]["content"].startswith("[")


def test_stream_chunks_get_tool_call_deltas() -> None:
    converter = ToolChunks(HermesCalls())
    text = 'Sure. <tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
    chunks = converter.convert(_chunk({"role": "assistant"}))
    for start in range(0, len(text), 7):
        chunks += converter.convert(_chunk({"content": text[start : start + 7]}))
    chunks += converter.convert(_chunk({}, "stop"))
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0] == {"role": "assistant"}
    assert "".join(delta.get("content") or "" for delta in deltas) == "Sure. "
    [call] = [entry for delta in deltas for entry in delta.get("tool_calls") or []]
    assert call["index"] == 0 and call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"][0]["finish_reason"]] == ["tool_calls"]
    assert all(chunk["id"] == "chatcmpl-1" and chunk["object"] == "chat.completion.chunk" for chunk in chunks)


def test_cut_off_stream_keeps_length() -> None:
    converter = ToolChunks(ForcedCalls())
    chunks = converter.convert(_chunk({"content": '[{"name": "weather", "arguments": {"ci'})) + converter.convert(_chunk({}, "length"))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"ci'}
