"""Text and vectors from Triton --> OpenAI-shaped JSON bytes.

Token counts: when the server does not report them (TensorRT-LLM, older vLLM
backends, KServe embedding models, or ``count_tokens_with="estimate"``) they are
estimated as one token per four characters, rounded up, the usual rule of
thumb for English text under BPE tokenizers. An estimated usage object carries
an extra ``"estimated": true`` field; non-streamed responses also get the
``x-sluicegate-usage-estimated: true`` header.
"""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from serving.base import Kind, Usage

USAGE_ESTIMATED_HEADER = "x-sluicegate-usage-estimated"

_CHARS_PER_TOKEN = 4
_encode = msgspec.json.encode


def estimate_tokens(text: str) -> int:
    return -(-len(text) // _CHARS_PER_TOKEN)


@dataclass(slots=True)
class ResponseMeta:
    """What every body of one response shares."""

    kind: Kind
    request_id: str
    model: str
    created: int

    @property
    def id(self) -> str:
        prefix = "chatcmpl-" if self.kind == "chat" else "cmpl-"
        return prefix + self.request_id

    @property
    def object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"


def usage_json(usage: Usage, estimated: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if estimated:
        out["estimated"] = True
    return out


def completion_body(
    meta: ResponseMeta, text: str, finish_reason: str, usage: Usage, estimated: bool, message: dict[str, Any] | None = None
) -> bytes:
    """The whole response; ``message`` replaces the plain chat message (tool calls read from ``text``)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if meta.kind == "chat":
        choice["message"] = message if message is not None else {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return _encode(
        {
            "id": meta.id,
            "object": meta.object,
            "created": meta.created,
            "model": meta.model,
            "choices": [choice],
            "usage": usage_json(usage, estimated),
        }
    )


def _chunk(meta: ResponseMeta, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk" if meta.kind == "chat" else "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return _encode(body)


def role_chunk(meta: ResponseMeta) -> bytes:
    return _chunk(meta, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])


def delta_chunk(meta: ResponseMeta, text: str, finish_reason: str | None = None) -> bytes:
    if meta.kind == "chat":
        delta = {"content": text} if text else {}
        return _chunk(meta, [{"index": 0, "delta": delta, "finish_reason": finish_reason}])
    return _chunk(meta, [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}])


def message_chunk(meta: ResponseMeta, delta: dict[str, Any]) -> bytes:
    """A chat chunk whose delta carries content and tool-call pieces."""
    return _chunk(meta, [{"index": 0, "delta": delta, "finish_reason": None}])


def usage_chunk(meta: ResponseMeta, usage: Usage, estimated: bool) -> bytes:
    return _chunk(meta, [], usage_json(usage, estimated))


def embeddings_body(model: str, vectors: Sequence[Sequence[float]], encoding: str, prompt_tokens: int) -> bytes:
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        embedding: Any = list(vector) if encoding == "float" else _base64_floats(vector)
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "estimated": True}
    return _encode({"object": "list", "data": data, "model": model, "usage": usage})


def _base64_floats(vector: Sequence[float]) -> str:
    # OpenAI's base64 encoding: little-endian float32 values, back to back.
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
