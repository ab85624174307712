"""Server-sent events for the fake upstream's streamed replies, as ready bytes.

Content chunks dominate a stream, so their constant JSON around the one word
that changes is encoded once per response (``_Frame``) instead of once per
chunk; the rare chunks (role, finish, usage, tool calls) go through msgspec.
"""

from __future__ import annotations

import functools

import msgspec

from bench.fake_replies import JsonObject, Reply, completion_tokens, usage

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


def sse(payload: JsonObject) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


@functools.lru_cache(maxsize=1024)
def _encoded_piece(piece: str) -> bytes:
    return _encode(piece)


class _Frame:
    """``head + json(piece) + tail`` for one response's content chunks."""

    __slots__ = ("head", "tail")

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head = head
        self.tail = tail

    def chunks(self, pieces: tuple[str, ...]) -> list[bytes]:
        head, tail = self.head, self.tail
        return [head + _encoded_piece(p) + tail for p in pieces]


def _envelope(ident: str, created: int, model: str, kind: str) -> JsonObject:
    return {"id": ident, "object": kind, "created": created, "model": model}


def _prefix(envelope: JsonObject) -> bytes:
    # the envelope encoded without its closing brace, ready for "choices"
    return b"data: " + _encode(envelope)[:-1] + b',"choices":[{'


def chat_events(
    envelope: JsonObject,
    reply: Reply,
    call: JsonObject | None,
    prompt_tokens: int,
    with_usage: bool,
) -> list[bytes]:
    """Role chunk, one chunk per word (or the tool call), finish, usage, [DONE]."""
    # OpenAI puts "usage": null on every chunk once the client asked for usage
    usage_tail = b',"usage":null}\n\n' if with_usage else b"}\n\n"
    extra = {"usage": None} if with_usage else {}
    events = [sse({**envelope, "choices": [_choice({"role": "assistant", "content": ""})], **extra})]
    if call is None:
        frame = _Frame(
            _prefix(envelope) + b'"index":0,"delta":{"content":',
            b'},"logprobs":null,"finish_reason":null}]' + usage_tail,
        )
        events += frame.chunks(reply.pieces())
        finish = reply.finish_reason
    else:
        events += [sse({**envelope, "choices": [_choice(d)], **extra}) for d in _tool_deltas(call)]
        finish = "tool_calls"
    events.append(sse({**envelope, "choices": [_choice({}, finish)], **extra}))
    if with_usage:
        spent = completion_tokens(reply, call)
        events.append(sse({**envelope, "choices": [], "usage": usage(prompt_tokens, spent)}))
    events.append(DONE)
    return events


def _choice(delta: JsonObject, finish: str | None = None) -> JsonObject:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _tool_deltas(call: JsonObject) -> list[JsonObject]:
    function = call["function"]
    opening = {
        "index": 0,
        "id": call["id"],
        "type": "function",
        "function": {"name": function["name"], "arguments": ""},
    }
    arguments = {"index": 0, "function": {"arguments": function["arguments"]}}
    return [{"tool_calls": [opening]}, {"tool_calls": [arguments]}]


def completion_events(envelope: JsonObject, reply: Reply, prompt_tokens: int, with_usage: bool) -> list[bytes]:
    """One chunk per word, a finish chunk, the usage chunk when asked, [DONE]."""
    usage_tail = b',"usage":null}\n\n' if with_usage else b"}\n\n"
    extra = {"usage": None} if with_usage else {}
    frame = _Frame(
        _prefix(envelope) + b'"text":',
        b',"index":0,"logprobs":null,"finish_reason":null}]' + usage_tail,
    )
    events = frame.chunks(reply.pieces())
    final = {"text": "", "index": 0, "logprobs": None, "finish_reason": reply.finish_reason}
    events.append(sse({**envelope, "choices": [final], **extra}))
    if with_usage:
        events.append(sse({**envelope, "choices": [], "usage": usage(prompt_tokens, reply.completion_tokens)}))
    events.append(DONE)
    return events
