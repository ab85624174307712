"""The OpenAI Responses API's create request, as msgspec Structs that validate what clients send.

Unlike chat, nothing of this body travels upstream as it is: the surface turns
it into a chat body (``router.responses_surface``), so fields not modelled here
are counted and dropped, never passed on. Input items and tools of a kind the
gateway cannot serve get a 400 that names the kind, before any work is done.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from core.errors import InvalidRequest
from router.decode import log_unknown, validation_error, decode_object
from router.wire import PositiveInt, Probability, Temperature

# --- input items ------------------------------------------------------------


class InputText(msgspec.Struct, tag_field="type", tag="input_text"):
    text: str


class OutputText(msgspec.Struct, tag_field="type", tag="output_text"):
    text: str


class Refusal(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


class InputImage(msgspec.Struct, tag_field="type", tag="input_image"):
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto", "original"] = "auto"


Part = InputText | OutputText | Refusal | InputImage
Role = Literal["user", "system", "developer", "assistant"]


class MessageItem(msgspec.Struct, tag_field="type", tag="message"):
    role: Role
    content: str | list[Part]
    id: str | None = None


class FunctionCallItem(msgspec.Struct, tag_field="type", tag="function_call"):
    call_id: Annotated[str, msgspec.Meta(min_length=1)]
    name: Annotated[str, msgspec.Meta(min_length=1)]
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(msgspec.Struct, tag_field="type", tag="function_call_output"):
    call_id: Annotated[str, msgspec.Meta(min_length=1)]
    output: str | list[Part]
    id: str | None = None


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem
ITEM_TYPES = frozenset(("message", "function_call", "function_call_output"))

# --- tools and output format ------------------------------------------------


class FunctionTool(msgspec.Struct, tag_field="type", tag="function", omit_defaults=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(msgspec.Struct, tag_field="type", tag="function"):
    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedFunction


class FormatText(msgspec.Struct, tag_field="type", tag="text"):
    pass


class FormatJsonObject(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class FormatJsonSchema(msgspec.Struct, tag_field="type", tag="json_schema", omit_defaults=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


TextFormat = FormatText | FormatJsonObject | FormatJsonSchema


class TextConfig(msgspec.Struct):
    format: TextFormat = msgspec.field(default_factory=FormatText)


# --- the request --------------------------------------------------------------


class ResponsesRequest(msgspec.Struct):
    model: str
    input: str | list[Item]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    text: TextConfig | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    metadata: Annotated[dict[str, Annotated[str, msgspec.Meta(max_length=512)]], msgspec.Meta(max_length=16)] | None = None
    user: str | None = None
    parallel_tool_calls: bool | None = None


FIELDS = frozenset(ResponsesRequest.__struct_fields__)
# Accepted by OpenAI, but what they ask for (server-side prompts, conversations,
# background runs) this gateway does not do: refused rather than silently ignored.
_REFUSED = {
    "conversation": "Conversations are not supported by this gateway; continue with `previous_response_id`.",
    "prompt": "Stored prompt templates are not supported by this gateway; send `instructions` and `input`.",
    "background": "Background responses are not supported by this gateway.",
}
_SHOWN = 64  # characters of a client-chosen type name quoted back in an error


def decode_request(body: bytes) -> tuple[ResponsesRequest, int]:
    """The validated request and the number of unknown top-level fields (dropped); a 400 for anything else."""
    raw = decode_object(body)
    model = raw.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` must be a non-empty string.", param="model", code="invalid_type")
    for name, message in _REFUSED.items():
        if raw.get(name):
            raise InvalidRequest(message, param=name, code="unsupported_parameter")
    _check_kinds(raw.get("input"), "input", ITEM_TYPES, "Input items")
    _check_kinds(raw.get("tools"), "tools", frozenset(("function",)), "Tools")
    try:
        request = msgspec.convert(raw, ResponsesRequest)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    unknown = raw.keys() - FIELDS
    if unknown:
        log_unknown("ResponsesRequest", unknown)
    return request, len(unknown)


def _check_kinds(value: object, param: str, served: frozenset[str], what: str) -> None:
    """Name an item or tool type the gateway does not serve; a message item may leave its type out (the SDK does).

    Mutates ``value``: a typeless message item gets its ``type``, so that the tagged union can decode it.
    """
    if not isinstance(value, list):
        return
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            continue  # the decoder names the wrong type
        kind = entry.get("type")
        if kind is None and param == "input" and "role" in entry:
            entry["type"] = "message"
            continue
        if isinstance(kind, str) and kind not in served:
            allowed = ", ".join(f"`{k}`" for k in sorted(served))
            raise InvalidRequest(
                f"{what} of type `{kind[:_SHOWN]}` are not supported by this gateway; supported: {allowed}.",
                param=f"{param}[{i}].type",
                code="unsupported_value",
            )
