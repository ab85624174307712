"""Putting the original values back where a response repeats a request's placeholders.

With ``mask_and_restore`` the upstream sees ``<EMAIL_ADDRESS_1>`` instead of the
address; the client should see the address again. ``Restorer`` does that for a
whole response body, ``StreamRestorer`` for a stream of chunks, where a
placeholder may arrive split over several chunks.

Inside tool-call arguments (JSON text) the original is inserted JSON-escaped, so
the arguments stay valid JSON whatever the value holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>")
_decode = msgspec.json.decode
_encode = msgspec.json.encode


def _may_hold_placeholder(data: bytes) -> bool:
    # JSON may spell '<' as an escape (Go's encoder does by default).
    return b"<" in data or b"\\u003c" in data or b"\\u003C" in data


class Restorer:
    """Placeholder -> original value, for one request."""

    __slots__ = ("_json", "_longest", "_plain", "_prefixes")

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._plain = dict(mapping)
        self._json = {k: _encode(v).decode()[1:-1] for k, v in mapping.items()}
        # Every proper prefix of a placeholder: what a chunk may end with mid-placeholder.
        self._prefixes = {p[:i] for p in mapping for i in range(1, len(p))}
        self._longest = max((len(p) for p in mapping), default=0)

    def __len__(self) -> int:
        return len(self._plain)

    def restore_text(self, text: str) -> str:
        if "<" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self._plain.get(m.group(), m.group()), text)

    def restore_json_text(self, text: str) -> str:
        """Like ``restore_text``, for text inside a JSON string (tool-call arguments)."""
        if "<" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self._json.get(m.group(), m.group()), text)

    def partial_start(self, text: str) -> int:
        """Where a trailing, possibly unfinished placeholder starts; ``len(text)`` if none.

        Placeholders hold '<' only as their first character, so only the last '<'
        can start one.
        """
        at = text.rfind("<", max(0, len(text) - self._longest))
        return at if at >= 0 and text[at:] in self._prefixes else len(text)

    def restore_completion(self, body: bytes) -> bytes:
        """A ``chat.completion`` or ``text_completion`` body with originals restored.

        Covers ``message.content`` (string or text parts), ``message.tool_calls[].
        function.arguments``, ``message.function_call.arguments`` and ``text``.
        Anything that is not such a body is returned unchanged.
        """
        if not self._plain or not _may_hold_placeholder(body):
            return body
        try:
            doc = _decode(body)
        except msgspec.DecodeError:
            return body
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list):
            return body
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("text"), str):
                choice["text"] = self.restore_text(choice["text"])
            message = choice.get("message")
            if isinstance(message, dict):
                self._restore_message(message)
        return _encode(doc)

    def _restore_message(self, message: dict[str, Any]) -> None:
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = self.restore_text(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = self.restore_text(part["text"])
        calls = message.get("tool_calls")
        functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        functions.append(message.get("function_call"))
        for function in functions:
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = self.restore_json_text(function["arguments"])

    def stream(self) -> StreamRestorer:
        return StreamRestorer(self)


# (choice index, field, tool-call index): one stream of text inside a stream of chunks.
_Key = tuple[int, str, int]
_TEMPLATE_FIELDS = ("id", "object", "created", "model", "system_fingerprint")


class StreamRestorer:
    """Restores placeholders in one stream of OpenAI chunks (chat or text completion).

    Contract:

    - Call ``feed_chunk`` with every ``data:`` payload, in order (not ``[DONE]``;
      anything that is not a JSON chunk comes back unchanged). It returns the
      payload to send instead: ``delta.content``, ``delta.tool_calls[].function.
      arguments``, ``delta.function_call.arguments`` and ``choices[].text`` have
      their placeholders restored. Text at the end of a field that could be the
      start of a placeholder is held back (per choice, per field, per tool call)
      and put in front of that field's text in a later chunk, so a field may come
      back as ``""``; chunks are never dropped, merged or reordered.
    - The chunk carrying a choice's ``finish_reason`` also carries everything still
      held for that choice (a field is added to its delta when needed).
    - When the stream ends without a ``finish_reason`` for some choice (upstream
      cut off), call ``flush``: it returns one more chunk payload holding what is
      left, or ``None``. Text that never became a placeholder is released as it was.
    """

    __slots__ = ("_held", "_restorer", "_template")

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._held: dict[_Key, str] = {}
        self._template: dict[str, Any] = {}

    def feed_chunk(self, data: bytes) -> bytes:
        if not self._held and not (len(self._restorer) and _may_hold_placeholder(data)):
            return data
        try:
            chunk = _decode(data)
        except msgspec.DecodeError:
            return data
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list):
            return data
        self._template = {k: chunk[k] for k in _TEMPLATE_FIELDS if k in chunk}
        for choice in choices:
            if isinstance(choice, dict):
                self._choice(choice)
        return _encode(chunk)

    def flush(self) -> bytes | None:
        if not self._held:
            return None
        indexes = sorted({key[0] for key in self._held})
        choices: list[dict[str, Any]] = [{"index": i, "finish_reason": None} for i in indexes]
        for choice in choices:
            self._release(choice)
        return _encode({**self._template, "choices": choices})

    def _choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        index = index if isinstance(index, int) else 0
        if isinstance(choice.get("text"), str):
            choice["text"] = self._pass((index, "text", 0), choice["text"])
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if isinstance(delta.get("content"), str):
                delta["content"] = self._pass((index, "content", 0), delta["content"])
            for position, call in enumerate(delta.get("tool_calls") or ()):
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    tool = call.get("index", position)
                    function["arguments"] = self._pass((index, "tool", tool), function["arguments"])
            function = delta.get("function_call")
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = self._pass((index, "function", 0), function["arguments"])
        if choice.get("finish_reason") is not None:
            self._release(choice)

    def _pass(self, key: _Key, text: str) -> str:
        text = self._held.pop(key, "") + text
        cut = self._restorer.partial_start(text)
        if cut < len(text):
            self._held[key] = text[cut:]
            text = text[:cut]
        if key[1] in ("tool", "function"):
            return self._restorer.restore_json_text(text)
        return self._restorer.restore_text(text)

    def _release(self, choice: dict[str, Any]) -> None:
        """Append whatever is held for this choice to its fields, creating them as needed."""
        index = choice.get("index", 0)
        for key in sorted(k for k in self._held if k[0] == index):
            rest = self._held.pop(key)
            _, field, tool = key
            if field == "text":
                choice["text"] = str(choice.get("text") or "") + rest
                continue
            delta = choice.setdefault("delta", {})
            if field == "content":
                delta["content"] = str(delta.get("content") or "") + rest
            elif field == "function":
                function = delta.setdefault("function_call", {})
                function["arguments"] = str(function.get("arguments") or "") + rest
            else:
                self._release_tool(delta, tool, rest)

    @staticmethod
    def _release_tool(delta: dict[str, Any], tool: int, rest: str) -> None:
        calls = delta.setdefault("tool_calls", [])
        for call in calls:
            if isinstance(call, dict) and call.get("index") == tool:
                function = call.setdefault("function", {})
                function["arguments"] = str(function.get("arguments") or "") + rest
                return
        calls.append({"index": tool, "function": {"arguments": rest}})
