"""Tool calls a model writes in its text the Hermes way: ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``.

Qwen, Hermes, SmolLM3 and others call tools so. A stream relays the text outside
the tags as content and each call once its closing tag has arrived; a region
that is not a call is given back as text. Engine-neutral and pure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from serving.base import JsonObject
from serving.tool_call_text import ARGUMENT_KEYS, ToolStream, assistant_message, call_json, new_call_id

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


def hermes_text(calls: list[JsonObject]) -> str:
    """Calls (arguments as objects) written the Hermes way, for templates that cannot render tool calls."""
    return "".join(
        _OPEN + json.dumps({"name": call["function"]["name"], "arguments": call["function"]["arguments"]}, ensure_ascii=False) + _CLOSE
        for call in calls
    )


def hermes_call(region: str) -> tuple[str, str] | None:
    """The (name, arguments JSON) inside one ``<tool_call>`` region, or None if it is not a call."""
    try:
        payload = json.loads(region)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return None
    arguments: object = next((payload[key] for key in ARGUMENT_KEYS if key in payload), {})
    return payload["name"], arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def hermes_split(text: str) -> tuple[str, list[JsonObject]]:
    """Whole text --> (text outside calls, calls); an unclosed last region counts if it parses."""
    content: list[str] = []
    calls: list[JsonObject] = []
    rest = text
    while (start := rest.find(_OPEN)) != -1:
        _outside(rest[:start], content, bool(calls))
        rest = rest[start + len(_OPEN) :]
        end = rest.find(_CLOSE)
        region, rest = (rest, "") if end == -1 else (rest[:end], rest[end + len(_CLOSE) :])
        parsed = hermes_call(region)
        if parsed is None:
            content.append(_OPEN + region + ("" if end == -1 else _CLOSE))
        else:
            calls.append(call_json(new_call_id(), *parsed))
    _outside(rest, content, bool(calls))
    return "".join(content), calls


def _outside(text: str, content: list[str], after_call: bool) -> None:
    # Whitespace between calls is layout, not an answer.
    if text.strip() or (text and not after_call):
        content.append(text)


class HermesCalls:
    """``ToolOutput`` for tool calls a model writes as ``<tool_call>`` JSON in its text."""

    def message(self, text: str) -> tuple[JsonObject, bool]:
        content, calls = hermes_split(text)
        if calls and not content.strip():
            return assistant_message(None, calls), True
        return assistant_message(content, calls), bool(calls)

    def stream(self) -> ToolStream:
        return _HermesStream()


class _HermesStream:
    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self._calls = 0

    @property
    def called(self) -> bool:
        return self._calls > 0

    def feed(self, text: str, token_ids: Sequence[int]) -> JsonObject | None:
        self._buffer += text
        content: list[str] = []
        entries: list[JsonObject] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(_OPEN)
                # Text that may be the start of a tag waits for the next piece.
                cut = start if start != -1 else len(self._buffer) - _partial_tag(self._buffer, _OPEN)
                self._text(self._buffer[:cut], content)
                self._buffer = self._buffer[cut:]
                if start == -1:
                    break
                self._buffer, self._in_call = self._buffer[len(_OPEN) :], True
            else:
                end = self._buffer.find(_CLOSE)
                if end == -1:
                    break
                region, self._buffer, self._in_call = self._buffer[:end], self._buffer[end + len(_CLOSE) :], False
                self._region(region, _CLOSE, content, entries)
        return self._delta("".join(content), entries)

    def finish(self) -> JsonObject | None:
        content: list[str] = []
        entries: list[JsonObject] = []
        if self._in_call:
            self._region(self._buffer, "", content, entries)
        else:
            self._text(self._buffer, content)
        self._buffer = ""
        return self._delta("".join(content), entries)

    def _text(self, text: str, content: list[str]) -> None:
        _outside(text, content, self._calls > 0)

    def _region(self, region: str, close: str, content: list[str], entries: list[JsonObject]) -> None:
        parsed = hermes_call(region)
        if parsed is None:
            content.append(_OPEN + region + close)
            return
        entries.append({"index": self._calls, **call_json(new_call_id(), *parsed)})
        self._calls += 1

    def _delta(self, content: str, entries: list[JsonObject]) -> JsonObject | None:
        delta: JsonObject = {}
        if content:
            delta["content"] = content
        if entries:
            delta["tool_calls"] = entries
        return delta or None


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
