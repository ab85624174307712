"""What the surfaces that render a chat answer in another API's shape read from it.

A chat completion (or one chunk of a chat stream), decoded into the few fields
the Responses and Anthropic Messages renderers need; anything else in it is
skipped by the decoder, never built.
"""

from __future__ import annotations

import msgspec


class Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: Function | None = None


class Message(msgspec.Struct):
    """A whole message (unary) or one chunk's delta (stream)."""

    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class TokenDetails(msgspec.Struct):
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class ChatUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: TokenDetails | None = None
    completion_tokens_details: TokenDetails | None = None


class Choice(msgspec.Struct):
    index: int = 0
    message: Message | None = None
    delta: Message | None = None
    finish_reason: str | None = None
    # vLLM's: the stop string that ended the choice (or a token id); any type, as upstreams vary.
    stop_reason: object = None


class Completion(msgspec.Struct):
    """A chat completion or one chunk of it."""

    choices: list[Choice] = []
    usage: ChatUsage | None = None


decode_completion = msgspec.json.Decoder(Completion).decode
UNREADABLE = (msgspec.ValidationError, msgspec.DecodeError)
