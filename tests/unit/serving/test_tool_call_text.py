"""Model text --> OpenAI tool calls, whole and streamed (serving.tool_call_text, serving.tool_call_hermes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serving.tool_call_hermes import HermesCalls, hermes_split, hermes_text
from serving.tool_call_text import ForcedCallReader, ForcedCalls, ToolOutput, tool_finish_reason

FORCED = '[{"name": "weather", "arguments": {"city": "Pa}r\\"is", "days": [1, {"x": "]"}]}}, {"name":"time","arguments":{}}]'
CALL = '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'


def _pieces(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def _accumulate(deltas: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """What an OpenAI client builds from the deltas: content and calls merged by index."""
    content = ""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        content += delta.get("content") or ""
        for entry in delta.get("tool_calls") or []:
            call = calls.setdefault(entry["index"], {"name": None, "arguments": ""})
            if "id" in entry:
                # id, type and name come once, in a call's first entry.
                assert call["name"] is None and entry["type"] == "function"
                call["name"] = entry["function"]["name"]
            call["arguments"] += entry["function"].get("arguments") or ""
    return content, [calls[index] for index in sorted(calls)]


def _stream(output: ToolOutput, text: str, size: int) -> tuple[str, list[dict[str, Any]], bool]:
    stream = output.stream()
    deltas = [stream.feed(piece, [0]) for piece in _pieces(text, size)] + [stream.finish()]
    content, calls = _accumulate([delta for delta in deltas if delta is not None])
    return content, calls, stream.called


# --- forced calls ----------------------------------------------------------------------


def test_forced_calls_whole() -> None:
    message, called = ForcedCalls().message(FORCED)
    assert called and message["content"] is None
    first, second = message["tool_calls"]
    assert first["function"]["name"] == "weather" and first["id"].startswith("call_") and first["type"] == "function"
    assert json.loads(first["function"]["arguments"]) == {"city": 'Pa}r"is', "days": [1, {"x": "]"}]}
    assert second["function"] == {"name": "time", "arguments": "{}"}
    assert first["id"] != second["id"]


@pytest.mark.parametrize("size", [1, 3, 17, 1000])
def test_forced_calls_streamed_in_any_pieces(size: int) -> None:
    content, calls, called = _stream(ForcedCalls(), FORCED, size)
    assert called and content == ""
    assert [call["name"] for call in calls] == ["weather", "time"]
    assert json.loads(calls[0]["arguments"]) == {"city": 'Pa}r"is', "days": [1, {"x": "]"}]}
    assert calls[1]["arguments"] == "{}"


def test_forced_stream_announces_the_name_before_arguments_end() -> None:
    stream = ForcedCalls().stream()
    assert stream.feed('[{"name": "wea', []) is None
    announced = stream.feed('ther", "arguments": {"ci', [])
    assert announced is not None
    assert announced == {
        "tool_calls": [
            {"index": 0, "id": announced["tool_calls"][0]["id"], "type": "function", "function": {"name": "weather", "arguments": '{"ci'}}
        ]
    }
    assert stream.feed('ty": "Paris"}}]', []) == {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}


def test_forced_reader_takes_spacing_scalars_and_any_member_order() -> None:
    reader = ForcedCallReader()
    reader.feed('[ {\n "arguments" : 42 ,\n "name" : "answer" } ,{"name":"flag","arguments":true}]')
    assert [(call["function"]["name"], call["function"]["arguments"]) for call in reader.finished_calls()] == [
        ("answer", "42"),
        ("flag", "true"),
    ]


def test_cut_off_forced_call_keeps_what_arrived() -> None:
    message, called = ForcedCalls().message('[{"name": "weather", "arguments": {"city": "Pa')
    assert called and message["tool_calls"][0]["function"]["arguments"] == '{"city": "Pa'
    nothing, called = ForcedCalls().message('[{"na')
    assert not called and nothing == {"role": "assistant", "content": '[{"na'}
    assert _stream(ForcedCalls(), '[{"na', 2) == ('[{"na', [], False)


def test_finish_reason_says_tool_calls_only_for_a_finished_turn() -> None:
    assert tool_finish_reason("stop", True) == "tool_calls"
    assert tool_finish_reason("length", True) == "length"
    assert tool_finish_reason("stop", False) == "stop"


# --- Hermes-format calls --------------------------------------------------------------------------


def test_hermes_whole() -> None:
    message, called = HermesCalls().message("Let me look. " + CALL)
    assert called and message["content"] == "Let me look. "
    [call] = message["tool_calls"]
    assert call["function"]["name"] == "weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    only_calls, _ = HermesCalls().message(CALL + "\n" + CALL.replace("Paris", "Rome"))
    assert only_calls["content"] is None and len(only_calls["tool_calls"]) == 2
    # The same text streamed gives the same content: layout between calls is dropped.
    between, _ = HermesCalls().message("Checking.\n" + CALL + "\n" + CALL)
    assert between["content"] == "Checking.\n"
    assert HermesCalls().message("No tools needed.") == ({"role": "assistant", "content": "No tools needed."}, False)


def test_hermes_regions_that_are_not_calls_stay_text() -> None:
    content, calls = hermes_split("a <tool_call>not json</tool_call> b")
    assert (content, calls) == ("a <tool_call>not json</tool_call> b", [])
    # An unclosed last region counts when it holds a call; "parameters" is read like "arguments".
    content, calls = hermes_split('x <tool_call>{"name": "f", "parameters": {"k": 1}}')
    assert content == "x " and [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("f", {"k": 1})]


@pytest.mark.parametrize("size", [1, 2, 5, 11, 1000])
def test_hermes_streamed_in_any_pieces(size: int) -> None:
    text = "Checking.\n" + CALL + "\n" + CALL.replace("weather", "time")
    content, calls, called = _stream(HermesCalls(), text, size)
    assert called and content == "Checking.\n"
    assert [call["name"] for call in calls] == ["weather", "time"]
    assert all(json.loads(call["arguments"]) == {"city": "Paris"} for call in calls)


def test_hermes_stream_holds_back_a_partial_tag() -> None:
    stream = HermesCalls().stream()
    assert stream.feed("Hi <tool", []) == {"content": "Hi "}
    assert stream.feed("box> there", []) == {"content": "<toolbox> there"}
    assert stream.feed(" <tool_call>{broken", []) == {"content": " "}
    # The region never closes and is not a call: it comes back as text.
    assert stream.finish() == {"content": "<tool_call>{broken"}
    assert not stream.called


def test_hermes_text_reads_back() -> None:
    calls = [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}, {"function": {"name": "time", "arguments": {}}}]
    content, parsed = hermes_split(hermes_text(calls))
    assert content == ""
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed] == [
        ("weather", {"city": "Paris"}),
        ("time", {}),
    ]
