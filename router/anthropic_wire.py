"""The Anthropic Messages API's requests, as msgspec Structs that validate what clients send.

As with Responses, nothing of this body travels upstream as it is: the surface
turns it into a chat body (``router.anthropic_surface``), so top-level fields
not modelled here (``thinking``, ``cache_control``, ``service_tier``, ...) are
counted and dropped. Fields inside blocks that are not modelled (a block's
``cache_control``, ``citations``) are ignored the same way. A content block or
tool of a kind the gateway cannot serve gets a 400 that names the kind.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

from core.errors import InvalidRequest
from router.decode import decode_object, log_unknown, validation_error
from router.wire import PositiveInt, Probability

# --- content blocks ----------------------------------------------------------

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class TextBlockParam(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class Base64ImageSource(msgspec.Struct, tag_field="type", tag="base64"):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: NonEmpty


class UrlImageSource(msgspec.Struct, tag_field="type", tag="url"):
    url: NonEmpty


class ImageBlockParam(msgspec.Struct, tag_field="type", tag="image"):
    source: Base64ImageSource | UrlImageSource


class ToolUseBlockParam(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: NonEmpty
    name: NonEmpty
    input: dict[str, Any]


class ToolResultBlockParam(msgspec.Struct, tag_field="type", tag="tool_result"):
    tool_use_id: NonEmpty
    content: str | list[TextBlockParam] | None = None
    is_error: bool = False


class ThinkingBlockParam(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlockParam(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str


# Thinking blocks are accepted (clients send a turn back as they got it) and
# dropped: like Anthropic, which ignores earlier turns' thinking.
BlockParam = TextBlockParam | ImageBlockParam | ToolUseBlockParam | ToolResultBlockParam | ThinkingBlockParam | RedactedThinkingBlockParam
BLOCK_TYPES = frozenset(("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"))


class MessageParam(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[BlockParam], msgspec.Meta(min_length=1)]


# --- tools ---------------------------------------------------------------------


class ToolParam(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    input_schema: dict[str, Any]
    description: str | None = None
    # Client tools may say so; server tools (web search, bash, ...) are refused before this.
    type: Literal["custom"] | None = None


class ToolChoiceAuto(msgspec.Struct, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(msgspec.Struct, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(msgspec.Struct, tag_field="type", tag="tool"):
    name: NonEmpty
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(msgspec.Struct, tag_field="type", tag="none"):
    pass


ToolChoiceParam = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class MetadataParam(msgspec.Struct):
    user_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None


# --- the requests --------------------------------------------------------------


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """What ``/v1/messages/count_tokens`` takes: the conversation, without sampling settings."""

    model: str
    messages: Annotated[list[MessageParam], msgspec.Meta(min_length=1)]
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None


class JsonSchemaOutputFormat(msgspec.Struct, tag_field="type", tag="json_schema"):
    schema: dict[str, Any]


class OutputConfigParam(msgspec.Struct, kw_only=True):
    """Structured output: the reply is JSON valid for ``format.schema`` (other keys are ignored)."""

    format: JsonSchemaOutputFormat | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    """``POST /v1/messages``: the conversation, and how to sample the reply."""

    max_tokens: PositiveInt
    stop_sequences: Annotated[list[str], msgspec.Meta(max_length=16)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stream: bool = False
    metadata: MetadataParam | None = None
    output_config: OutputConfigParam | None = None


_SHOWN = 64  # characters of a client-chosen type name quoted back in an error
R = TypeVar("R", bound=CountTokensRequest)


def decode_request(body: bytes, shape: type[R]) -> tuple[R, int]:
    """The validated request and the number of unknown top-level fields (dropped); a 400 for anything else."""
    raw = decode_object(body)
    model = raw.get("model")
    if model is None:
        raise InvalidRequest("model: Field required.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` must be a non-empty string.", param="model", code="invalid_type")
    _check_blocks(raw.get("messages"))
    _check_tools(raw.get("tools"))
    try:
        request = msgspec.convert(raw, shape)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    unknown = raw.keys() - frozenset(shape.__struct_fields__)
    if unknown:
        log_unknown(shape.__name__, unknown)
    return request, len(unknown)


def _check_blocks(messages: object) -> None:
    """Name a content block type the gateway does not serve (``document``, server tool results, ...)."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue  # a string, or a wrong type the decoder names
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if isinstance(kind, str) and kind not in BLOCK_TYPES:
                allowed = ", ".join(f"`{k}`" for k in sorted(BLOCK_TYPES))
                raise InvalidRequest(
                    f"Content blocks of type `{kind[:_SHOWN]}` are not supported by this gateway; supported: {allowed}.",
                    param=f"messages[{i}].content[{j}].type",
                    code="unsupported_value",
                )


def _check_tools(tools: object) -> None:
    """Server tools (a ``type`` other than ``custom``) run at Anthropic; the gateway has none to run."""
    if not isinstance(tools, list):
        return
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind != "custom":
            raise InvalidRequest(
                f"Tools of type `{kind[:_SHOWN]}` are not supported by this gateway; only client tools (`custom`) are.",
                param=f"tools[{i}].type",
                code="unsupported_value",
            )
