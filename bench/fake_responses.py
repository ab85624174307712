"""What the fake upstream answers on ``POST /v1/responses``: the Responses API's wire format, no I/O.

The replies are chat's (``bench.fake_replies``), read from a chat view of the
request (``chat_view``: `instructions` and input messages as messages,
`max_output_tokens`, `text.format`, function tools): the same words, one word
one token, a prompt's tokens the words of its instructions and input texts;
the same behaviours, chosen the same way. On top of chat's:

- a function tool (``tool_choice`` not ``"none"``) and input not ending with
  a tool's output: a ``function_call`` item, arguments valid for its schema;
- a ``web_search*`` tool: a ``web_search_call`` item (its query the last user
  text) before the message;
- ``reasoning``: a ``reasoning`` item first, with a one-line summary when
  ``reasoning.summary`` is set and ``encrypted_content`` when ``include``
  names ``reasoning.encrypted_content``; its words count as reasoning tokens;
- ``max_output_tokens`` cutting the answer: status ``incomplete``;
- ``prompt_cache_key``: half the input tokens (rounded down) reported cached.

Refused as OpenAI refuses them (400, OpenAI's error shape): chat's fields
(``messages``, ``max_tokens``, ``stream_options.include_usage``), an input
message with an ``id`` that is not the assistant's, a reasoning item without
its encrypted content when nothing is stored (``store: false``), and any
``previous_response_id`` (the fake stores nothing: 404). Streams are the typed
events, ``event:``/``data:`` framed with sequence numbers, with no ``[DONE]``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from bench import fake_replies as replies
from bench.fake_replies import JsonObject, Reply

_encode = msgspec.json.encode
REASONING_SUMMARY = "Thinking it over."
# Chat's fields, which the Responses API does not take.
_CHAT_ONLY = ("messages", "max_tokens", "max_completion_tokens", "response_format", "n")


def refusal(body: JsonObject) -> tuple[int, JsonObject] | None:
    """The status and error body OpenAI would answer this request with instead, if any."""
    for name in _CHAT_ONLY:
        if name in body:
            return 400, replies.error_detail(f"Unsupported parameter: '{name}'.", "invalid_request_error")
    options = body.get("stream_options")
    if isinstance(options, dict) and "include_usage" in options:
        return 400, replies.error_detail("Unknown parameter: 'stream_options.include_usage'.", "invalid_request_error")
    if body.get("previous_response_id") is not None:
        message = f"Previous response with id '{body['previous_response_id']}' not found."
        return 404, replies.error_detail(message, "invalid_request_error", "previous_response_not_found")
    items = body.get("input")
    if not isinstance(items, (str, list)):
        return 400, replies.error_detail("Invalid type for 'input': expected a string or an array.", "invalid_request_error")
    for n, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            return 400, replies.error_detail(f"Invalid type for 'input[{n}]'.", "invalid_request_error")
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") != "assistant" and "id" in item:
            return 400, replies.error_detail(f"Unknown parameter: 'input[{n}].id'.", "invalid_request_error")
        if kind == "reasoning" and body.get("store") is False and not item.get("encrypted_content"):
            message = f"Item with id '{item.get('id')}' not found. Items are not persisted when `store` is set to false."
            return 400, replies.error_detail(message, "invalid_request_error")
    return None


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def chat_view(body: JsonObject) -> JsonObject:
    """The request as the chat replies read it."""
    messages: list[JsonObject] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    for item in [{"role": "user", "content": items}] if isinstance(items, str) else items or ():
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role", "user"), "content": _text(item.get("content"))})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": _text(item.get("output"))})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": None})
    view: JsonObject = {"model": body.get("model"), "messages": messages}
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    if tools:
        view["tools"] = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        view["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif isinstance(choice, str):
        view["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        view["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt.get("schema", {})}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        view["response_format"] = {"type": "json_object"}
    if isinstance(body.get("max_output_tokens"), int):
        view["max_tokens"] = body["max_output_tokens"]
    return view


class Answer:
    """One request's answer: its output items, usage and status, as a body or as events."""

    def __init__(self, body: JsonObject, view: JsonObject, reply: Reply, serial: int) -> None:
        self.body = body
        self.id = f"resp_fake{serial}"
        self.serial = serial
        self.created = int(time.time())
        self.reply = reply
        self.call = replies.tool_call(view)
        self.prompt = replies.chat_prompt_tokens(view["messages"])
        reasoning = body.get("reasoning")
        self.reasoning = self._reasoning(reasoning) if isinstance(reasoning, dict) else None
        tools = body.get("tools") or ()
        searches = any(isinstance(t, dict) and str(t.get("type", "")).startswith("web_search") for t in tools)
        self.search = self._search(replies.request_text(view)) if searches and self.call is None else None
        self.incomplete = self.call is None and reply.finish_reason == "length"

    def _reasoning(self, settings: JsonObject) -> JsonObject:
        item: JsonObject = {"type": "reasoning", "id": f"rs_fake{self.serial}", "summary": []}
        if settings.get("summary"):
            item["summary"] = [{"type": "summary_text", "text": REASONING_SUMMARY}]
        include = self.body.get("include")
        if isinstance(include, list) and "reasoning.encrypted_content" in include:
            item["encrypted_content"] = f"enc_fake{self.serial}"
        return item

    def _search(self, query: str) -> JsonObject:
        return {
            "type": "web_search_call", "id": f"ws_fake{self.serial}", "status": "completed",
            "action": {"type": "search", "query": query},
        }  # fmt: skip

    def message(self, text: str, status: str) -> JsonObject:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {
            "type": "message", "id": f"msg_fake{self.serial}", "role": "assistant", "status": status,
            "content": [part] if text or status == "completed" else [],
        }  # fmt: skip

    def function_call(self, arguments: str, status: str) -> JsonObject:
        assert self.call is not None
        function = self.call["function"]
        return {
            "type": "function_call", "id": f"fc_fake{self.serial}", "call_id": self.call["id"], "name": function["name"],
            "arguments": arguments, "status": status,
        }  # fmt: skip

    def output(self) -> list[JsonObject]:
        out = [item for item in (self.reasoning, self.search) if item is not None]
        if self.call is not None:
            out.append(self.function_call(self.call["function"]["arguments"], "completed"))
        else:
            out.append(self.message(self.reply.text, "incomplete" if self.incomplete else "completed"))
        return out

    def usage(self) -> JsonObject:
        reasoning = replies.count_words(REASONING_SUMMARY) if self.reasoning is not None else 0
        output = replies.completion_tokens(self.reply, self.call) + reasoning
        cached = self.prompt // 2 if self.body.get("prompt_cache_key") else 0
        return {
            "input_tokens": self.prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": self.prompt + output,
        }

    def response(self, status: str, output: list[JsonObject], usage: JsonObject | None) -> JsonObject:
        b = self.body
        text: JsonObject = b["text"] if isinstance(b.get("text"), dict) else {}
        reasoning: JsonObject = b["reasoning"] if isinstance(b.get("reasoning"), dict) else {}
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": b.get("instructions"), "max_output_tokens": b.get("max_output_tokens"), "model": b.get("model"),
            "output": output, "parallel_tool_calls": b.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}, "store": b.get("store", True),
            "temperature": b.get("temperature", 1.0),
            "text": {"format": text.get("format", {"type": "text"}), "verbosity": text.get("verbosity", "medium")},
            "tool_choice": b.get("tool_choice", "auto"), "tools": b.get("tools", []), "top_p": b.get("top_p", 1.0),
            "truncation": b.get("truncation", "disabled"), "usage": usage, "user": b.get("user"), "metadata": b.get("metadata") or {},
        }  # fmt: skip

    def status(self) -> str:
        return "incomplete" if self.incomplete else "completed"

    def body_json(self, with_usage: bool) -> JsonObject:
        return self.response(self.status(), self.output(), self.usage() if with_usage else None)

    def events(self, with_usage: bool) -> list[bytes]:
        return _Events(self).all(with_usage)


def event(kind: str, seq: int, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode({"type": kind, "sequence_number": seq, **fields}) + b"\n\n"


class _Events:
    """The typed events of one answer, in the order OpenAI sends them."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.out: list[bytes] = []

    def add(self, kind: str, **fields: Any) -> None:
        self.out.append(event(kind, len(self.out), **fields))

    def all(self, with_usage: bool) -> list[bytes]:
        a = self.answer
        self.add("response.created", response=a.response("in_progress", [], None))
        self.add("response.in_progress", response=a.response("in_progress", [], None))
        index = 0
        if a.reasoning is not None:
            self.add("response.output_item.added", output_index=index, item={**a.reasoning, "summary": []})
            if a.reasoning["summary"]:
                self._summary(a.reasoning, index)
            self.add("response.output_item.done", output_index=index, item=a.reasoning)
            index += 1
        if a.search is not None:
            self.add("response.output_item.added", output_index=index, item={**a.search, "status": "in_progress"})
            for step in ("in_progress", "searching", "completed"):
                self.add(f"response.web_search_call.{step}", item_id=a.search["id"], output_index=index)
            self.add("response.output_item.done", output_index=index, item=a.search)
            index += 1
        if a.call is not None:
            self._call(index)
        else:
            self._message(index)
        self.add(f"response.{a.status()}", response=a.body_json(with_usage))
        return self.out

    def _summary(self, item: JsonObject, index: int) -> None:
        where = {"item_id": item["id"], "output_index": index, "summary_index": 0}
        self.add("response.reasoning_summary_part.added", **where, part={"type": "summary_text", "text": ""})
        self.add("response.reasoning_summary_text.delta", **where, delta=REASONING_SUMMARY)
        self.add("response.reasoning_summary_text.done", **where, text=REASONING_SUMMARY)
        self.add("response.reasoning_summary_part.done", **where, part={"type": "summary_text", "text": REASONING_SUMMARY})

    def _call(self, index: int) -> None:
        a = self.answer
        assert a.call is not None
        arguments: str = a.call["function"]["arguments"]
        self.add("response.output_item.added", output_index=index, item=a.function_call("", "in_progress"))
        where = {"item_id": f"fc_fake{a.serial}", "output_index": index}
        self.add("response.function_call_arguments.delta", **where, delta=arguments)
        self.add("response.function_call_arguments.done", **where, arguments=arguments)
        self.add("response.output_item.done", output_index=index, item=a.function_call(arguments, "completed"))

    def _message(self, index: int) -> None:
        a = self.answer
        where = {"item_id": f"msg_fake{a.serial}", "output_index": index, "content_index": 0}
        self.add("response.output_item.added", output_index=index, item=a.message("", "in_progress"))
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self.add("response.content_part.added", **where, part=empty)
        for piece in a.reply.pieces():
            self.add("response.output_text.delta", **where, delta=piece, logprobs=[])
        text = a.reply.text
        self.add("response.output_text.done", **where, text=text, logprobs=[])
        self.add("response.content_part.done", **where, part={**empty, "text": text})
        self.add("response.output_item.done", output_index=index, item=a.message(text, a.status()))


def failure_event(seq: int) -> bytes:
    """What a stream that fails part way sends last."""
    return event("error", seq, code="server_error", message="The upstream failed mid-stream.", param=None)
