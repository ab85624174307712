"""What the fake upstream answers: deterministic OpenAI-shaped bodies, no I/O.

Everything here is a pure function of the request body so that tests (and the
gateway's own tests) can predict every byte: the reply text cycles through
``WORDS``, one word is one token, and a prompt's token count is its number of
whitespace-separated words (at least 1).

Structured outputs: a chat request whose ``response_format`` is ``json_schema``
is answered with JSON that its schema accepts (``bench.fake_json``), one that
asks for ``json_object`` with ``{"text": <the usual reply>}``; either is cut by
``max_tokens`` (at spaces, finish "length") and by a stop string, as plain
replies are, and streamed in 4-character pieces. Tools are called until the
last message is a tool's result: then the answer is text, unless
``tool_choice`` is ``"required"`` or names a function.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec

from bench.fake_json import sample_json

JsonObject: TypeAlias = dict[str, Any]

WORDS = ("Hello", "from", "the", "fake", "upstream.")
DEFAULT_CHUNKS = 20
HUGE_STREAM_WORDS = 2000
# About 5 MiB of text: each cycle of WORDS plus separators is 30 characters.
HUGE_WORDS = 5 * 1024 * 1024 // 30 * len(WORDS)
EMBEDDING_DIM = 8
MODEL_CREATED = 1_700_000_000

ERROR_BEHAVIORS: dict[str, tuple[int, str, str | None, str]] = {
    "error_400": (400, "invalid_request_error", None, "Invalid request (fake upstream error_400)."),
    "error_401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "error_429": (429, "requests", "rate_limit_exceeded", "Rate limit reached (fake upstream error_429)."),
    "error_429_date": (429, "requests", "rate_limit_exceeded", "Rate limit reached (fake upstream error_429_date)."),
    "error_500": (500, "server_error", None, "The server had an error while processing your request."),
    "error_503": (503, "server_error", None, "The engine is currently overloaded, please try again later."),
}
STREAM_BEHAVIORS = frozenset({"error_midstream", "disconnect_midstream"})
# ``ignore_max_tokens``: an upstream that does not honour max_tokens (some do not).
# ``echo``: answers with the last user text (or the prompt), streamed in 4-character pieces.
# ``words``: embeddings by the words an input uses (``_word_vector``), so that paraphrases lie near each other.
BEHAVIORS = frozenset({"normal", "slow", "huge", "no_usage", "ignore_max_tokens", "echo", "words", *ERROR_BEHAVIORS, *STREAM_BEHAVIORS})
WORD_DIM = 256
# Words that carry no meaning of their own, and contractions spelled out: "what's" and "what is" embed alike.
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "be",
        "of",
        "to",
        "in",
        "on",
        "for",
        "and",
        "or",
        "please",
        "me",
        "my",
        "i",
        "you",
        "your",
        "it",
        "its",
        "s",
        "do",
        "does",
        "what",
    ]
)
ECHO_PIECE = 4
# ``error_429_date`` sends its Retry-After as an HTTP date this far ahead.
RETRY_AFTER_DATE_S = 30
# A prompt starting with this picks the behaviour named next (``fake-behavior:error_500 ...``):
# the model name and headers are the deployment's, the prompt is what a client controls.
PROMPT_DIRECTIVE = "fake-behavior:"


def behavior_of(model: str, header: str | None, body: JsonObject | None = None) -> str:
    """The header wins; then ``fake-<behavior>`` or the bare behavior name; then the prompt's directive."""
    if header:
        return header if header in BEHAVIORS else "normal"
    name = model.removeprefix("fake-")
    if name in BEHAVIORS:
        return name
    prompt = request_text(body) if body is not None else ""
    if prompt.startswith(PROMPT_DIRECTIVE):
        wanted = prompt.removeprefix(PROMPT_DIRECTIVE).split(maxsplit=1)
        return wanted[0] if wanted and wanted[0] in BEHAVIORS else "normal"
    return "normal"


def error_body(behavior: str) -> tuple[int, JsonObject]:
    status, kind, code, message = ERROR_BEHAVIORS[behavior]
    return status, error_detail(message, kind, code)


def error_detail(message: str, kind: str = "server_error", code: str | None = None) -> JsonObject:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def count_words(text: str) -> int:
    return len(text.split())


def _content_words(content: object) -> int:
    if isinstance(content, str):
        return count_words(content)
    if isinstance(content, list):
        # multi-part content: only text parts count
        return sum(count_words(part["text"]) for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return 0


def chat_prompt_tokens(messages: object) -> int:
    if not isinstance(messages, list):
        return 1
    words = sum(_content_words(m.get("content")) for m in messages if isinstance(m, dict))
    return max(words, 1)


def completion_prompt_tokens(prompt: object) -> int:
    if isinstance(prompt, str):
        return max(count_words(prompt), 1)
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, int) for p in prompt):
            return len(prompt)
        return max(sum(completion_prompt_tokens(p) for p in prompt), 1)
    return 1


@functools.lru_cache(maxsize=64)
def reply_text(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


@functools.lru_cache(maxsize=256)
def _pieces(text: str) -> tuple[str, ...]:
    if not text:
        return ()
    first, *rest = text.split(" ")
    return (first, *(" " + word for word in rest))


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    completion_tokens: int
    finish_reason: str
    # Fixed-size stream pieces instead of words (so a value can be split across chunks).
    piece_size: int = 0

    def pieces(self) -> tuple[str, ...]:
        """The stream deltas, one word each with its leading space; they concatenate to ``text``."""
        if self.piece_size:
            return tuple(self.text[i : i + self.piece_size] for i in range(0, len(self.text), self.piece_size))
        return _pieces(self.text)


def request_text(body: JsonObject) -> str:
    """The last user message's text (chat) or the prompt (completions)."""
    text = ""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list):
        text = " ".join(p for p in prompt if isinstance(p, str))
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
            text = " ".join(p.get("text") or "" for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
    return text


def echo_reply(body: JsonObject) -> Reply:
    """The request's text (see ``request_text``) back as the answer."""
    text = request_text(body)
    return Reply(text, count_words(text), "stop", ECHO_PIECE)


def _stops(body: JsonObject) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def plan_reply(body: JsonObject, words: int, honour_max_tokens: bool = True) -> Reply:
    """``words`` words, cut by max_tokens (finish "length") then by a stop string."""
    finish = "stop"
    limit = (body.get("max_completion_tokens") or body.get("max_tokens")) if honour_max_tokens else None
    if isinstance(limit, int) and 0 < limit < words:
        words, finish = limit, "length"
    text = reply_text(words)
    cut = min((i for i in (text.find(s) for s in _stops(body)) if i >= 0), default=-1)
    if cut < 0:
        return Reply(text, words, finish)
    return Reply(text[:cut], count_words(text[:cut]), "stop")


def structured_reply(body: JsonObject, words: int, honour_max_tokens: bool = True) -> Reply | None:
    """JSON for a request whose ``response_format`` asks for it; None for any other request."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        value = sample_json(spec.get("schema", {}) if isinstance(spec, dict) else {})
    elif kind == "json_object":
        value = {"text": reply_text(words)}
    else:
        return None
    text = msgspec.json.encode(value).decode()
    finish = "stop"
    limit = (body.get("max_completion_tokens") or body.get("max_tokens")) if honour_max_tokens else None
    spaced = text.split(" ")
    if isinstance(limit, int) and 0 < limit < len(spaced):
        text, finish = " ".join(spaced[:limit]), "length"
    cut = min((i for i in (text.find(s) for s in _stops(body)) if i >= 0), default=-1)
    if cut >= 0:
        text, finish = text[:cut], "stop"
    return Reply(text, max(count_words(text), 1), finish, ECHO_PIECE)


def usage(prompt_tokens: int, completion_tokens: int) -> JsonObject:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chosen_tool(body: JsonObject) -> JsonObject | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "tool" and choice != "required" and not isinstance(choice, dict):
        return None  # the tool has answered: the model answers in turn
    functions = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        functions = [f for f in functions if f.get("name") == wanted] or functions
    return functions[0] if functions else None


def tool_call(body: JsonObject) -> JsonObject | None:
    """A call to the first (or the forced) tool, arguments that its parameters schema accepts."""
    function = _chosen_tool(body)
    if function is None:
        return None
    params = function.get("parameters")
    args = sample_json(params if isinstance(params, dict) else {"type": "object"})
    return {
        "id": "call_fake_0",
        "type": "function",
        "function": {"name": str(function.get("name", "")), "arguments": msgspec.json.encode(args).decode()},
    }


def completion_tokens(reply: Reply, call: JsonObject | None) -> int:
    """Tokens billed for the answer: its words, or the tool call's argument words."""
    if call is None:
        return reply.completion_tokens
    return max(count_words(call["function"]["arguments"]), 1)


def chat_body(envelope: JsonObject, reply: Reply, call: JsonObject | None) -> JsonObject:
    """A ``chat.completion`` object (usage is added by the caller)."""
    if call is not None:
        message: JsonObject = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": reply.text}
        finish = reply.finish_reason
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {**envelope, "choices": [choice]}


def completion_body(envelope: JsonObject, reply: Reply) -> JsonObject:
    """A ``text_completion`` object (usage is added by the caller)."""
    choice = {"text": reply.text, "index": 0, "logprobs": None, "finish_reason": reply.finish_reason}
    return {**envelope, "choices": [choice]}


def _embedding_inputs(value: object) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, (str, list))]
    return []


def _vector(item: str | list[int], dim: int) -> list[float]:
    # a tiny LCG seeded by the input: same input, same vector, in any process
    seed = zlib.crc32(item.encode() if isinstance(item, str) else repr(item).encode())
    values = []
    for _ in range(dim):
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        values.append(round(seed / 0x7FFFFFFF * 2 - 1, 6))
    return values


def _word_vector(item: str | list[int], dim: int) -> list[float]:
    """A bag of the input's words (lower-cased, stop words out, a plural's ``s`` dropped), each hashed to a dimension."""
    text = item if isinstance(item, str) else " ".join(map(str, item))
    values = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word in _STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s"):
            word = word[:-1]
        values[zlib.crc32(word.encode()) % dim] += 1.0
    if not any(values):
        values[0] = 1.0
    return values


def embeddings_body(body: JsonObject, model: str, behavior: str = "normal") -> JsonObject:
    inputs = _embedding_inputs(body.get("input"))
    dims = body.get("dimensions")
    words = behavior == "words"
    dim = dims if isinstance(dims, int) and 0 < dims <= 4096 else (WORD_DIM if words else EMBEDDING_DIM)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        floats = _word_vector(item, dim) if words else _vector(item, dim)
        # base64 is what the OpenAI SDK asks for by default: little-endian float32
        vector = base64.b64encode(struct.pack(f"<{dim}f", *floats)).decode() if as_base64 else floats
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(count_words(i) if isinstance(i, str) else len(i) for i in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": max(tokens, 1), "total_tokens": max(tokens, 1)},
    }


def models_body() -> JsonObject:
    names = ["fake-model", *sorted(f"fake-{b}" for b in BEHAVIORS)]
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": MODEL_CREATED, "owned_by": "fake-upstream"} for n in names],
    }
