"""OpenAI request shapes, as msgspec Structs used to validate what clients send.

Validation runs on the decoded dict; the dict itself (unknown fields included)
is what travels upstream, so fields we do not model are passed through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
N = Annotated[int, msgspec.Meta(ge=1, le=128)]
Stop = str | Annotated[list[str], msgspec.Meta(max_length=16)] | None
# msgspec allows one array-like type per union, so token-id prompts share the list.
PromptItems = Annotated[list[str | int | list[int]], msgspec.Meta(min_length=1)]


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ContentPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: dict[str, Any]


class AudioPart(msgspec.Struct, tag_field="type", tag="input_audio"):
    input_audio: dict[str, Any]


class FilePart(msgspec.Struct, tag_field="type", tag="file"):
    file: dict[str, Any]


class RefusalPart(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


Part = ContentPart | ImagePart | AudioPart | FilePart | RefusalPart


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class Message(msgspec.Struct):
    role: Role
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    n: N = 1
    temperature: Temperature | None = None
    top_p: Probability | None = None
    stop: Stop = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


class CompletionRequest(msgspec.Struct):
    model: str
    prompt: str | PromptItems
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    n: N = 1
    best_of: N | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    stop: Stop = None
    seed: int | None = None
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | PromptItems
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None
    user: str | None = None


Request = ChatRequest | CompletionRequest | EmbeddingRequest

FIELDS: dict[type[Request], frozenset[str]] = {
    cls: frozenset(cls.__struct_fields__) for cls in (ChatRequest, CompletionRequest, EmbeddingRequest)
}
