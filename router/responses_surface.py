"""Responses request --> the Responses body the pipeline carries, and that body --> a chat body.

A conversation is kept as Responses items in one canonical shape (the one the
SDK reads back from ``input_items``): each message's content is a list of
parts, every item has an id and a status. The request's own input is brought
to that shape first (``input_items``); a stored response's items come back in
it. ``responses_body`` is the request with its whole conversation as input:
what an upstream with the Responses API is sent (``router.responses_native``),
and what ``translated`` turns into a chat body for every other engine; items
only such an upstream reads (reasoning, search calls) are left out of chat.
"""

from __future__ import annotations

from typing import Any

import msgspec

from core.errors import InvalidRequest
from router.responses_mcp_wire import McpApprovalRequestItem, McpApprovalResponseItem, McpCallItem, McpListToolsItem
from router.responses_wire import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputText,
    Item,
    MessageItem,
    Native,
    OutputText,
    Part,
    Refusal,
    ResponsesRequest,
    TextConfig,
)

JsonObject = dict[str, Any]
_to_builtins = msgspec.to_builtins


# --- request input --> canonical items -----------------------------------------


def input_items(request: ResponsesRequest, request_id: str) -> list[JsonObject]:
    """The request's input as canonical items; items without an id get one of this request's."""
    items: list[Item] = [MessageItem(role="user", content=request.input)] if isinstance(request.input, str) else request.input
    out: list[JsonObject] = []
    for n, item in enumerate(items):
        if isinstance(item, MessageItem):
            content = _parts(item, f"input[{n}].content")
            fields: JsonObject = {"type": "message", "id": item.id or f"msg_{request_id}_{n}", "role": item.role, "content": content}
        elif isinstance(item, FunctionCallItem):
            fields = {"type": "function_call", "id": item.id or f"fc_{request_id}_{n}", "call_id": item.call_id}
            fields.update(name=item.name, arguments=item.arguments)
        elif isinstance(item, FunctionCallOutputItem):
            output: str | list[JsonObject] = (
                item.output
                if isinstance(item.output, str)
                else [_input_part(p, f"input[{n}].output[{j}]") for j, p in enumerate(item.output)]
            )
            fields = {"type": "function_call_output", "id": item.id or f"fco_{request_id}_{n}", "call_id": item.call_id, "output": output}
        elif isinstance(item, McpApprovalResponseItem):
            fields = {"type": "mcp_approval_response", "id": item.id or f"mcpa_{request_id}_{n}"}
            out.append({**fields, "approval_request_id": item.approval_request_id, "approve": item.approve, "reason": item.reason})
            continue
        elif isinstance(item, (McpApprovalRequestItem, McpCallItem, McpListToolsItem)):
            out.append({k: v for k, v in _to_builtins(item).items() if v is not None})
            continue
        else:  # reasoning, web or file search: kept as sent, for an upstream with the Responses API
            out.append({"status": "completed", **{k: v for k, v in _to_builtins(item).items() if v is not None}})
            continue
        out.append({**fields, "status": "completed"})
    return out


def _parts(item: MessageItem, param: str) -> list[JsonObject]:
    """Content as parts: the assistant's are output parts (what the SDK gave back), everyone else's input parts."""
    content: list[Part]
    if isinstance(item.content, str):
        content = [OutputText(item.content) if item.role == "assistant" else InputText(item.content)]
    else:
        content = item.content
    if item.role != "assistant":
        return [_input_part(p, f"{param}[{j}]") for j, p in enumerate(content)]
    out: list[JsonObject] = []
    for j, part in enumerate(content):
        if isinstance(part, InputImage):
            raise InvalidRequest("An assistant message cannot carry an image.", param=f"{param}[{j}].type", code="invalid_value")
        if isinstance(part, Refusal):
            out.append({"type": "refusal", "refusal": part.refusal})
        else:
            out.append({"type": "output_text", "text": part.text, "annotations": []})
    return out


def _input_part(part: Part, param: str) -> JsonObject:
    if isinstance(part, (InputText, OutputText)):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, Refusal):
        raise InvalidRequest("Only an assistant message can carry a refusal.", param=f"{param}.type", code="invalid_value")
    if part.image_url is None:
        # A file id names a file uploaded to OpenAI, which this gateway cannot read.
        message = "An input_image needs an `image_url` (a URL or a data URL); file ids are not supported."
        raise InvalidRequest(message, param=f"{param}.image_url")
    return {"type": "input_image", "image_url": part.image_url, "detail": part.detail}


# --- canonical items --> chat messages ---------------------------------------------


def chat_messages(instructions: str | None, items: list[JsonObject]) -> list[JsonObject]:
    """The chat messages of a conversation; consecutive function calls join the assistant turn before them.

    Items chat has no words for (reasoning, built-in tools' calls, MCP tool
    lists) are left out: the messages around them carry what they led to. An
    MCP call is the assistant's tool call and its result; a declined approval
    request, a tool call the client refused.
    """
    messages: list[JsonObject] = [{"role": "system", "content": instructions}] if instructions else []
    asked: dict[str, JsonObject] = {}  # MCP approval requests by id
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append(_chat_message(item))
        elif kind == "function_call":
            _append_call(messages, item["call_id"], item["name"], item["arguments"])
        elif kind == "function_call_output":
            output = item["output"]
            content = output if isinstance(output, str) else _chat_content(output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
        elif kind == "mcp_call":
            _append_call(messages, item["id"], item["name"], item["arguments"])
            messages.append({"role": "tool", "tool_call_id": item["id"], "content": mcp_call_text(item)})
        elif kind == "mcp_approval_request":
            asked[item["id"]] = item
        elif kind == "mcp_approval_response" and not item["approve"] and item["approval_request_id"] in asked:
            request = asked[item["approval_request_id"]]
            _append_call(messages, request["id"], request["name"], request["arguments"])
            messages.append({"role": "tool", "tool_call_id": request["id"], "content": DECLINED})
    return messages


DECLINED = "The user declined this tool call."


def _append_call(messages: list[JsonObject], call_id: str, name: str, arguments: str) -> None:
    """A tool call joins the assistant turn before it, or opens one."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def mcp_call_text(item: JsonObject) -> str:
    """What the model reads of an MCP call: its output, else its error's text."""
    output = item.get("output")
    if isinstance(output, str):
        return output
    error = item.get("error")
    if isinstance(error, dict):
        content = error.get("content")
        if isinstance(content, list):
            return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(error.get("message", "The tool call failed."))
    return str(error) if error else ""


def _chat_message(item: JsonObject) -> JsonObject:
    role = item["role"]
    if role == "assistant":
        # A refusal is what the assistant said: kept as its text, which every upstream takes.
        text = "".join(p["text"] if p["type"] == "output_text" else p["refusal"] for p in item["content"])
        return {"role": "assistant", "content": text}
    # `developer` is OpenAI's newer name for `system`; not every upstream knows it.
    return {"role": "system" if role == "developer" else role, "content": _chat_content(item["content"])}


def _chat_content(parts: list[JsonObject]) -> str | list[JsonObject]:
    if len(parts) == 1 and parts[0]["type"] == "input_text":
        return str(parts[0]["text"])
    out: list[JsonObject] = []
    for part in parts:
        if part["type"] == "input_text":
            out.append({"type": "text", "text": part["text"]})
        else:
            out.append({"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}})
    return out


# --- the Responses body, the chat body and the echo -------------------------------------


def responses_body(request: ResponsesRequest, items: list[JsonObject], native: Native | None = None) -> JsonObject:
    """The request with ``items`` (the earlier conversation, then its input) as its input; gateway-only fields left out."""
    if not items and not request.instructions:
        raise InvalidRequest("The request has no input: send `input` or `instructions`.", param="input", code="invalid_value")
    body: JsonObject = {"model": request.model, "input": items}
    if request.instructions is not None:
        body["instructions"] = request.instructions
    if request.stream:
        body["stream"] = True
    tools = native.tools if native is not None else _to_builtins(request.tools) if request.tools else None
    if tools:
        body["tools"] = tools
    if native is not None and native.tool_choice is not None:
        body["tool_choice"] = native.tool_choice
    elif request.tool_choice is not None:
        body["tool_choice"] = _to_builtins(request.tool_choice)
    if request.text is not None:
        body["text"] = _text(request.text)
    optional = {
        "parallel_tool_calls": request.parallel_tool_calls,
        "max_output_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
    }
    body.update((k, v) for k, v in optional.items() if v is not None)
    if native is not None:
        body.update(native.fields)
    return body


def _text(config: TextConfig) -> JsonObject:
    text: JsonObject = {"format": _to_builtins(config.format)}
    if config.verbosity is not None:
        text["verbosity"] = config.verbosity
    return text


def translated(body: JsonObject) -> JsonObject:
    """A Responses body (``responses_body``) as a chat body; a 400 for what chat cannot carry."""
    messages = chat_messages(body.get("instructions"), body["input"])
    if not messages:
        raise InvalidRequest("The request has no input: send `input` or `instructions`.", param="input", code="invalid_value")
    chat: JsonObject = {"model": body["model"], "messages": messages}
    if body.get("stream"):
        chat["stream"] = True
    tools = body.get("tools")
    if tools:
        chat["tools"] = [{"type": "function", "function": _function(tool, f"tools[{i}].type")} for i, tool in enumerate(tools)]
        if "parallel_tool_calls" in body:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        chat["tool_choice"] = {"type": "function", "function": {"name": _function(choice, "tool_choice.type")["name"]}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = body["text"]["format"] if "text" in body else None
    if fmt is not None and fmt["type"] == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt["type"] == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    optional = {"max_tokens": "max_output_tokens", "temperature": "temperature", "top_p": "top_p", "user": "user"}
    chat.update((k, body[name]) for k, name in optional.items() if name in body)
    return chat


def chat_body(request: ResponsesRequest, items: list[JsonObject]) -> JsonObject:
    """The pipeline's chat body for ``items`` (the earlier conversation, then this request's input)."""
    return translated(responses_body(request, items))


def _function(tool: JsonObject, param: str) -> JsonObject:
    if tool["type"] != "function":
        raise InvalidRequest(
            f"`{tool['type']}` is served only by a deployment with the Responses API, and none may serve this request.",
            param=param,
            code="unsupported_value",
        )
    return {k: v for k, v in tool.items() if k != "type"}


def echo(request: ResponsesRequest, native: Native | None = None) -> JsonObject:
    """The request's settings as a Response object repeats them."""
    text = request.text.format if request.text is not None else None
    tools = native.tools if native is not None else None
    choice = native.tool_choice if native is not None else None
    if choice is None and request.tool_choice is not None:
        choice = _to_builtins(request.tool_choice)
    return {
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "parallel_tool_calls": True if request.parallel_tool_calls is None else request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "store": request.store,
        "temperature": request.temperature,
        "text": {"format": _to_builtins(text) if text is not None else {"type": "text"}},
        "tool_choice": choice if choice is not None else "auto",
        "tools": tools if tools is not None else _to_builtins(request.tools or []),
        "top_p": request.top_p,
        "truncation": "disabled",
        "user": request.user,
    }
