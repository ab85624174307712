"""Gemini ``generateContent`` replies --> OpenAI chat completions.

Pure functions over decoded JSON, shared by whole replies (here) and streams
(``serving.gemini_stream``): finish reasons, usage, tool calls.
"""

from __future__ import annotations

import time
import uuid

import msgspec

from core.errors import UpstreamError
from serving.base import JsonObject, Usage, make_usage, usage_json

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}
_encode = msgspec.json.Encoder().encode


def finish_reason(gemini_reason: object, has_calls: bool) -> str:
    """Gemini says STOP after a function call; OpenAI clients look for tool_calls."""
    if has_calls:
        return "tool_calls"
    # LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, ... have no OpenAI name: the turn just ended.
    return FINISH_REASONS.get(gemini_reason if isinstance(gemini_reason, str) else "", "stop")


def to_usage(metadata: object) -> Usage | None:
    """usageMetadata --> Usage; thinking is output OpenAI-style, cached tokens are part of the prompt."""
    if not isinstance(metadata, dict):
        return None
    prompt = int(metadata.get("promptTokenCount") or 0) + int(metadata.get("toolUsePromptTokenCount") or 0)
    completion = int(metadata.get("candidatesTokenCount") or 0) + int(metadata.get("thoughtsTokenCount") or 0)
    return make_usage(prompt, completion, int(metadata.get("cachedContentTokenCount") or 0))


def openai_usage(usage: Usage, metadata: JsonObject) -> JsonObject:
    """OpenAI's usage object, with thinking tokens reported as reasoning tokens."""
    out = usage_json(usage)
    out["completion_tokens_details"] = {"reasoning_tokens": int(metadata.get("thoughtsTokenCount") or 0)}
    return out


def completion_id(reply: JsonObject) -> str:
    response_id = reply.get("responseId")
    return f"chatcmpl-{response_id}" if isinstance(response_id, str) and response_id else f"chatcmpl-{uuid.uuid4().hex}"


def tool_call(part: JsonObject) -> JsonObject:
    """A functionCall part --> an OpenAI tool call; Gemini rarely gives ids, so one is made."""
    call = part["functionCall"]
    call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
    out: JsonObject = {
        "id": call_id,
        "type": "function",
        "function": {"name": call["name"], "arguments": _encode(call.get("args") or {}).decode()},
    }
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        # Gemini 3 wants it back with the call; Google's own OpenAI layer puts it here.
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def max_calls(body: JsonObject) -> int | None:
    """Tool calls a reply may carry: one when the client set ``parallel_tool_calls: false``."""
    return 1 if body.get("parallel_tool_calls") is False else None


def answer_parts(candidate: JsonObject) -> tuple[list[str], list[JsonObject]]:
    """A candidate's answer texts and function-call parts; thought summaries are not the answer."""
    texts: list[str] = []
    calls: list[JsonObject] = []
    content = candidate.get("content") or {}
    for part in content.get("parts") or ():
        if "functionCall" in part:
            calls.append(part)
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
    return texts, calls


def to_openai_response(
    reply: JsonObject, *, model: str, created: int | None = None, max_calls: int | None = None
) -> tuple[JsonObject, Usage | None]:
    """A whole Gemini reply --> an OpenAI chat.completion and its usage; UpstreamError if malformed.

    ``max_calls``: tool calls kept per choice (1 for ``parallel_tool_calls: false``, which Gemini has no setting for).
    """
    try:
        return _openai_response(reply, model, created, max_calls)
    except (AttributeError, TypeError, KeyError, ValueError, msgspec.EncodeError):
        raise UpstreamError("Gemini returned a reply of an unexpected shape") from None


def _openai_response(reply: JsonObject, model: str, created: int | None, max_calls: int | None) -> tuple[JsonObject, Usage | None]:
    choices = [_choice(candidate, i, max_calls) for i, candidate in enumerate(reply.get("candidates") or ())]
    if not choices:
        # A blocked prompt gets no candidates: an empty, filtered answer, not a failure.
        blocked = bool((reply.get("promptFeedback") or {}).get("blockReason"))
        reason = "content_filter" if blocked else "stop"
        choices = [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": reason, "logprobs": None}]
    metadata = reply.get("usageMetadata")
    usage = to_usage(metadata)
    body: JsonObject = {
        "id": completion_id(reply),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": reply.get("modelVersion") or model,
        "choices": choices,
    }
    if usage is not None and isinstance(metadata, dict):
        body["usage"] = openai_usage(usage, metadata)
    return body, usage


def _choice(candidate: JsonObject, position: int, max_calls: int | None) -> JsonObject:
    texts, calls = answer_parts(candidate)
    calls = calls[:max_calls]
    message: JsonObject = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = [tool_call(part) for part in calls]
    index = candidate.get("index")
    return {
        "index": index if isinstance(index, int) else position,
        "message": message,
        "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls)),
        "logprobs": None,
    }
