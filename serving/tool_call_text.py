"""Model text --> OpenAI ``tool_calls``, whole or as stream deltas: the shared shapes and forced calls.

``ForcedCalls`` reads the output of a forced call, decoded under
``serving.structured_outputs.forced_call_schema``: ``[{"name": ..., "arguments": ...}]``.
A small JSON scanner keeps its state between pieces, so a stream announces each
call as soon as its name is complete and then relays the arguments as they are
generated. Free-text calls in the Hermes format are read by
``serving.tool_call_hermes``. Engine-neutral and pure.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from serving.base import JsonObject

_WHITESPACE = " \t\n\r"
# Hermes names the field "arguments"; Llama-style JSON calls name it "parameters".
ARGUMENT_KEYS = ("arguments", "parameters")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def call_json(call_id: str, name: str, arguments: str) -> JsonObject:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_finish_reason(reason: str, called: bool) -> str:
    """OpenAI ends a turn that called tools with ``tool_calls``; a cut-off turn stays ``length``."""
    return "tool_calls" if called and reason == "stop" else reason


def assistant_message(content: str | None, calls: list[JsonObject]) -> JsonObject:
    message: JsonObject = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


class ToolStream(Protocol):
    """One choice's generated text --> chat deltas carrying content and tool-call pieces."""

    @property
    def called(self) -> bool: ...

    def feed(self, text: str, token_ids: Sequence[int]) -> JsonObject | None: ...

    def finish(self) -> JsonObject | None: ...


class ToolOutput(Protocol):
    """How one request's tool calls are read back from the model's text."""

    def message(self, text: str) -> tuple[JsonObject, bool]: ...

    def stream(self) -> ToolStream: ...


# --- forced calls ------------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    id: str
    name: str | None = None
    arguments: str = ""
    announced: bool = False
    sent: int = 0


class ForcedCallReader:
    """Incremental scanner for ``[{"name": "...", "arguments": <json>}, ...]``."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        # start: before "[" | items: between calls | key, key_text, colon: a member's key |
        # value: before a member's value | in_value: inside it | after: after a value
        self._state = "start"
        self._raw: list[str] = []
        self._field = ""
        self._kind = ""
        self._nesting = 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> None:
        for char in text:
            self._step(char)

    def _step(self, char: str) -> None:
        state = self._state
        if state == "start":
            self._state = "items" if char == "[" else state
        elif state == "items":
            if char == "{":
                self.calls.append(_Call(id=new_call_id()))
                self._state = "key"
        elif state == "key":
            if char == '"':
                self._raw, self._escaped, self._state = [char], False, "key_text"
            elif char == "}":
                self._state = "items"
        elif state == "key_text":
            self._raw.append(char)
            if self._string_closes(char):
                self._field, self._state = _loads_str(self._raw), "colon"
        elif state == "colon":
            self._state = "value" if char == ":" else state
        elif state == "value":
            if char not in _WHITESPACE:
                self._start_value(char)
        elif state == "in_value":
            self._in_value(char)
        elif state == "after":
            self._state = "key" if char == "," else "items" if char == "}" else state

    def _string_closes(self, char: str) -> bool:
        if self._escaped:
            self._escaped = False
            return False
        if char == "\\":
            self._escaped = True
            return False
        return char == '"'

    def _start_value(self, char: str) -> None:
        self._raw, self._escaped, self._in_string = [], False, False
        self._kind = "nested" if char in "{[" else "string" if char == '"' else "scalar"
        self._nesting = 0
        self._state = "in_value"
        self._in_value(char)

    def _in_value(self, char: str) -> None:
        if self._kind == "scalar" and (char in ",}" or char in _WHITESPACE):
            self._end_value()
            self._step(char)
            return
        self._append(char)
        if self._kind == "string":
            if len(self._raw) > 1 and self._string_closes(char):
                self._end_value()
        elif self._kind == "nested":
            if self._in_string:
                self._in_string = not self._string_closes(char)
            elif char == '"':
                self._in_string, self._escaped = True, False
            elif char in "{[":
                self._nesting += 1
            elif char in "}]":
                self._nesting -= 1
                if self._nesting == 0:
                    self._end_value()

    def _append(self, char: str) -> None:
        self._raw.append(char)
        if self._field in ARGUMENT_KEYS and self.calls:
            self.calls[-1].arguments += char

    def _end_value(self) -> None:
        self._state = "after"
        if self._field == "name" and self.calls:
            name = _loads_str(self._raw)
            self.calls[-1].name = name or None

    def deltas(self) -> list[JsonObject]:
        """``tool_calls`` delta entries for what arrived since the last call: ids and names first."""
        entries: list[JsonObject] = []
        for index, call in enumerate(self.calls):
            if call.name is None:
                # Calls are announced in order; a later one waits for this name.
                break
            new = call.arguments[call.sent :]
            call.sent = len(call.arguments)
            if not call.announced:
                call.announced = True
                entries.append({"index": index, **call_json(call.id, call.name, new)})
            elif new:
                entries.append({"index": index, "function": {"arguments": new}})
        return entries

    def finished_calls(self) -> list[JsonObject]:
        return [call_json(call.id, call.name, call.arguments) for call in self.calls if call.name is not None]


def _loads_str(raw: list[str]) -> str:
    try:
        value = json.loads("".join(raw))
    except ValueError:
        return ""
    return value if isinstance(value, str) else ""


class ForcedCalls:
    """``ToolOutput`` for a forced call: the whole text is the JSON array of calls."""

    def message(self, text: str) -> tuple[JsonObject, bool]:
        reader = ForcedCallReader()
        reader.feed(text)
        calls = reader.finished_calls()
        # Cut off before any name was complete: the text is all there is to give back.
        return assistant_message(None if calls else text, calls), bool(calls)

    def stream(self) -> ToolStream:
        return _ForcedStream()


class _ForcedStream:
    def __init__(self) -> None:
        self._reader = ForcedCallReader()
        self._text: list[str] = []

    @property
    def called(self) -> bool:
        return any(call.announced for call in self._reader.calls)

    def feed(self, text: str, token_ids: Sequence[int]) -> JsonObject | None:
        self._reader.feed(text)
        self._text.append(text)
        entries = self._reader.deltas()
        return {"tool_calls": entries} if entries else None

    def finish(self) -> JsonObject | None:
        # As in a whole response: cut off before any name was complete, the text is all there is.
        text = "".join(self._text)
        return {"content": text} if text and not self.called else None
