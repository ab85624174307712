"""Anthropic stream events --> OpenAI chunks."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from core.errors import UpstreamError
from serving.anthropic_stream import StreamTranslator

# --- streaming ---------------------------------------------------------------


def feed_all(events: list[dict[str, Any]]) -> tuple[StreamTranslator, list[dict[str, Any]], list[Any]]:
    translator = StreamTranslator(created=1)
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    return translator, [msgspec.json.decode(chunk.data) for chunk in chunks], chunks


START = {
    "type": "message_start",
    "message": {
        "id": "msg_s",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": None,
        "usage": {
            "input_tokens": 12,
            "cache_read_input_tokens": 8,
            "cache_creation_input_tokens": 0,
            "output_tokens": 1,
        },
    },
}


def test_stream_text() -> None:
    events: list[dict[str, Any]] = [
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    translator, payloads, chunks = feed_all(events)
    assert translator.done
    assert all(p["id"] == "msg_s" and p["model"] == "claude-x" and p["created"] == 1 for p in payloads)
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [p["choices"][0]["delta"].get("content") for p in payloads[1:3]] == ["Hel", "lo"]
    assert [c.text for c in chunks[1:3]] == ["Hel", "lo"]
    assert payloads[3]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}
    assert chunks[3].finish_reason == "length"
    assert payloads[4]["choices"] == []
    assert payloads[4]["usage"] == {
        "prompt_tokens": 20,
        "completion_tokens": 9,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    assert chunks[4].usage_only and chunks[4].usage is not None and chunks[4].usage.cached_tokens == 8
    assert len(payloads) == 5


def test_stream_tool_use() -> None:
    events: list[dict[str, Any]] = [
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_10", "name": "time", "input": {}},
        },
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}},
        {"type": "message_stop"},
    ]
    _, payloads, _ = feed_all(events)
    calls = [c for p in payloads if p["choices"] for c in p["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_9",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    first = "".join(c["function"]["arguments"] for c in calls if c["index"] == 0)
    assert msgspec.json.decode(first) == {"city": "Paris"}
    assert next(c for c in calls if c["index"] == 1)["id"] == "toolu_10"
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 1) == "{}"
    assert payloads[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_error_event_raises() -> None:
    translator = StreamTranslator()
    translator.feed(START)
    with pytest.raises(UpstreamError) as info:
        translator.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert "overloaded_error" in info.value.message
    assert not translator.done


def test_stream_ignores_unknown_events_and_thinking_deltas() -> None:
    translator = StreamTranslator()
    translator.feed(START)
    assert (
        translator.feed(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "x"}}
        )
        == []
    )
    assert translator.feed({"type": "some_future_event"}) == []
