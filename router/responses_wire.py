"""The OpenAI Responses API's create request, as msgspec Structs that validate what clients send.

Two decodings, chosen by the alias the request names. ``decode_request`` is for
an alias served only by translation: the surface turns the request into a chat
body (``router.responses_surface``), so fields not modelled here are counted and
dropped, never passed on, and input items and tools of a kind chat cannot carry
get a 400 that names the kind, before any work is done. ``decode_native`` is for
an alias with a deployment whose upstream has the Responses API
(``router.responses_native``): built-in tools, reasoning and search items and a
few settings chat has no words for (``NATIVE_FIELDS``) are kept for it
(``Native``); the rest is validated as for translation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from core.errors import InvalidRequest
from router.decode import decode_object, log_unknown, validation_error
from router.responses_mcp_wire import MCP_ITEM_TYPES, McpItem
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


class SummaryText(msgspec.Struct, tag_field="type", tag="summary_text"):
    text: str


class ReasoningText(msgspec.Struct, tag_field="type", tag="reasoning_text"):
    text: str


# Items only an upstream with the Responses API reads (what its own answers hold).
class ReasoningItem(msgspec.Struct, tag_field="type", tag="reasoning"):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    summary: list[SummaryText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: str | None = None


class WebSearchCallItem(msgspec.Struct, tag_field="type", tag="web_search_call"):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    status: str = "completed"
    action: dict[str, Any] | None = None


class FileSearchCallItem(msgspec.Struct, tag_field="type", tag="file_search_call"):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    queries: list[str] = []
    status: str = "completed"
    results: list[dict[str, Any]] | None = None


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | WebSearchCallItem | FileSearchCallItem | McpItem
ITEM_TYPES = frozenset(("message", "function_call", "function_call_output"))
NATIVE_ITEM_TYPES = ITEM_TYPES | {"reasoning", "web_search_call", "file_search_call"}

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
    # Read by an upstream with the Responses API only; translation drops it.
    verbosity: Literal["low", "medium", "high"] | None = None


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
FUNCTION_TOOLS = frozenset(("function",))
# Built-in tools an upstream with the Responses API runs itself.
BUILTIN_TOOLS = frozenset(
    (
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
    )
)


class NativeFields(msgspec.Struct, omit_defaults=True):
    """Settings passed on to an upstream with the Responses API as they are (translation drops them, as unknown)."""

    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    max_tool_calls: PositiveInt | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    stream_options: dict[str, Any] | None = None


NATIVE_FIELDS = frozenset(NativeFields.__struct_fields__)


@dataclass(slots=True)
class Native:
    """What a request keeps for an upstream with the Responses API, beyond ``ResponsesRequest``."""

    tools: list[dict[str, Any]] | None  # every tool, in the client's order (built-in ones as sent)
    tool_choice: dict[str, Any] | None  # a built-in tool forced, as sent
    fields: dict[str, Any]  # NATIVE_FIELDS the client set
    # What the request uses that only such an upstream serves (for the error when none may), or None.
    requires: str | None


def request_model(raw: dict[str, Any]) -> str:
    """The alias a request names; a 400 when it names none."""
    model = raw.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` must be a non-empty string.", param="model", code="invalid_type")
    return model


def decode_request(body: bytes | dict[str, Any], *, mcp: bool = False) -> tuple[ResponsesRequest, int]:
    """The validated request and the number of unknown top-level fields (dropped); a 400 for anything else.

    ``mcp``: the request has ``mcp`` tools (taken out of it already), so its input may hold MCP items.
    """
    raw = decode_object(body) if isinstance(body, bytes) else body
    _refuse(raw)
    _check_kinds(raw.get("input"), "input", ITEM_TYPES | MCP_ITEM_TYPES if mcp else ITEM_TYPES, "Input items")
    _check_kinds(raw.get("tools"), "tools", FUNCTION_TOOLS, "Tools")
    request = _convert(raw, ResponsesRequest)
    unknown = raw.keys() - FIELDS
    if unknown:
        log_unknown("ResponsesRequest", unknown)
    return request, len(unknown)


def decode_native(raw: dict[str, Any]) -> tuple[ResponsesRequest, Native, int]:
    """As ``decode_request``, keeping what only an upstream with the Responses API serves (``Native``)."""
    _refuse(raw)
    items = raw.get("input")
    _check_kinds(items, "input", NATIVE_ITEM_TYPES, "Input items")
    tools = raw.get("tools")
    _check_kinds(tools, "tools", FUNCTION_TOOLS | BUILTIN_TOOLS, "Tools")
    fields = {k: v for k, v in raw.items() if k not in NATIVE_FIELDS and k != "tools"}
    choice = raw.get("tool_choice")
    builtin_choice = choice if isinstance(choice, dict) and choice.get("type") in BUILTIN_TOOLS else None
    if builtin_choice is not None:
        del fields["tool_choice"]
    request = _convert(fields, ResponsesRequest)
    functions, ordered = _tools(tools)
    request.tools = functions
    extra = _convert({k: raw[k] for k in NATIVE_FIELDS if k in raw}, NativeFields)
    unknown = raw.keys() - FIELDS - NATIVE_FIELDS
    if unknown:
        log_unknown("ResponsesRequest", unknown)
    requires = _requires(items, ordered, builtin_choice)
    return request, Native(ordered, builtin_choice, msgspec.to_builtins(extra), requires), len(unknown)


def _refuse(raw: dict[str, Any]) -> None:
    request_model(raw)
    for name, message in _REFUSED.items():
        if raw.get(name):
            raise InvalidRequest(message, param=name, code="unsupported_parameter")


def _convert(raw: dict[str, Any], shape: type[Any], at: str = "") -> Any:
    try:
        return msgspec.convert(raw, shape)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if at:  # the path of the part converted on its own, in front of the error's
            message = message.replace("`$", f"`$.{at}", 1) if " - at `$" in message else f"{message} - at `$.{at}`"
        raise validation_error(message) from None


def _tools(tools: object) -> tuple[list[FunctionTool] | None, list[dict[str, Any]] | None]:
    """Function tools validated; and every tool in order, built-in ones as the client sent them."""
    if tools is None:
        return None, None
    if not isinstance(tools, list):
        raise InvalidRequest("Invalid value for 'tools': Expected `array`.", param="tools", code="invalid_type")
    functions: list[FunctionTool] = []
    ordered: list[dict[str, Any]] = []
    for i, entry in enumerate(tools):
        if isinstance(entry, dict) and entry.get("type") in BUILTIN_TOOLS:
            ordered.append(entry)
            continue
        tool: FunctionTool = _convert(entry, FunctionTool, f"tools[{i}]")
        functions.append(tool)
        ordered.append(msgspec.to_builtins(tool))
    return functions or None, ordered


def _requires(items: object, tools: list[dict[str, Any]] | None, choice: dict[str, Any] | None) -> str | None:
    for tool in tools or ():
        if tool["type"] in BUILTIN_TOOLS:
            return f"tools of type `{tool['type']}`"
    if choice is not None:
        return f"a `tool_choice` of type `{choice['type']}`"
    for item in items if isinstance(items, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in NATIVE_ITEM_TYPES - ITEM_TYPES:
            return f"input items of type `{kind}`"
    return None


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
