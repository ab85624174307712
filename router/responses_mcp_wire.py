"""The Responses API's ``mcp`` tools and MCP items, as msgspec Structs that validate what clients send.

An ``mcp`` tool names a server by ``server_label``: one of the servers a
plugin fronts (``core.plugin.ToolProvider``), reached with the gateway's own
credentials. ``server_url`` is accepted and not used (the gateway never
connects where a client points it); ``headers``, ``authorization``,
``connector_id`` and ``tunnel_id`` are refused, since a client's credential
never goes upstream. ``take_mcp_tools`` removes the ``mcp`` entries from a
request's ``tools`` (the rest decodes as usual) and is the only work a
request without them pays.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from core.errors import InvalidRequest
from router.decode import validation_error

MAX_MCP_TOOLS = 16


class ToolFilter(msgspec.Struct, omit_defaults=True):
    """Tools picked by name, or by the server's read-only hint."""

    tool_names: list[str] | None = None
    read_only: bool | None = None

    def matches(self, name: str, annotations: dict[str, Any] | None) -> bool:
        """Whether the tool meets every criterion the filter sets (a filter that sets none picks none)."""
        if self.tool_names is None and self.read_only is None:
            return False
        if self.tool_names is not None and name not in self.tool_names:
            return False
        return self.read_only is None or self.read_only == bool((annotations or {}).get("readOnlyHint", False))


class ApprovalFilter(msgspec.Struct, omit_defaults=True):
    always: ToolFilter | None = None
    never: ToolFilter | None = None


class McpTool(msgspec.Struct, tag_field="type", tag="mcp", omit_defaults=True):
    server_label: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    server_url: str | None = None
    server_description: str | None = None
    allowed_tools: list[str] | ToolFilter | None = None
    # OpenAI's default: every call waits for the client's approval.
    require_approval: Literal["always", "never"] | ApprovalFilter | None = None

    def allows(self, name: str, annotations: dict[str, Any] | None) -> bool:
        """Whether ``allowed_tools`` lets the model see tool ``name``."""
        allowed = self.allowed_tools
        if allowed is None:
            return True
        if isinstance(allowed, list):
            return name in allowed
        return allowed.matches(name, annotations)

    def needs_approval(self, name: str, annotations: dict[str, Any] | None) -> bool:
        """Whether a call of ``name`` waits for an ``mcp_approval_response``."""
        policy = self.require_approval
        if policy is None or policy == "always":
            return True
        if policy == "never":
            return False
        if policy.always is not None and policy.always.matches(name, annotations):
            return True
        return policy.never is None or not policy.never.matches(name, annotations)


# Fields of an mcp tool that would send the client's credentials, or reach a server the gateway does not front.
_REFUSED = {
    "headers": "The gateway calls MCP servers with its own credentials; `headers` are not accepted.",
    "authorization": "The gateway calls MCP servers with its own credentials; `authorization` is not accepted.",
    "connector_id": "Connectors are not supported by this gateway; name a configured MCP server by `server_label`.",
    "tunnel_id": "Tunnels are not supported by this gateway; name a configured MCP server by `server_label`.",
}


def take_mcp_tools(raw: dict[str, Any]) -> list[tuple[int, McpTool]] | None:
    """The request's ``mcp`` tools with their places in ``tools``, taken out of ``raw["tools"]``.

    None (``raw`` untouched) when it has none.
    """
    tools = raw.get("tools")
    if not isinstance(tools, list) or not any(isinstance(t, dict) and t.get("type") == "mcp" for t in tools):
        return None
    found: list[tuple[int, McpTool]] = []
    rest: list[Any] = []
    labels: set[str] = set()
    for i, entry in enumerate(tools):
        if not (isinstance(entry, dict) and entry.get("type") == "mcp"):
            rest.append(entry)
            continue
        for name, message in _REFUSED.items():
            if entry.get(name):
                raise InvalidRequest(message, param=f"tools[{i}].{name}", code="unsupported_parameter")
        try:
            tool = msgspec.convert(entry, McpTool)
        except msgspec.ValidationError as exc:
            raise validation_error(str(exc).replace("`$", f"`$.tools[{i}]", 1)) from None
        if tool.server_label in labels:
            message = f"MCP server `{tool.server_label}` is listed twice."
            raise InvalidRequest(message, param=f"tools[{i}].server_label", code="invalid_value")
        labels.add(tool.server_label)
        found.append((i, tool))
    if len(found) > MAX_MCP_TOOLS:
        raise InvalidRequest(f"At most {MAX_MCP_TOOLS} `mcp` tools may be sent.", param="tools", code="invalid_value")
    if rest:
        raw["tools"] = rest
    else:
        del raw["tools"]
    return found


# --- MCP items a client sends back (as input, or in a conversation it keeps itself) -----------


class McpApprovalResponseItem(msgspec.Struct, tag_field="type", tag="mcp_approval_response"):
    approval_request_id: Annotated[str, msgspec.Meta(min_length=1)]
    approve: bool
    id: str | None = None
    reason: str | None = None


class McpApprovalRequestItem(msgspec.Struct, tag_field="type", tag="mcp_approval_request"):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    server_label: str
    name: str
    arguments: str


class McpCallItem(msgspec.Struct, tag_field="type", tag="mcp_call"):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: dict[str, Any] | str | None = None
    status: str | None = None
    approval_request_id: str | None = None


class McpListToolsItem(msgspec.Struct, tag_field="type", tag="mcp_list_tools"):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    server_label: str
    tools: list[dict[str, Any]] = []
    error: str | None = None


McpItem = McpApprovalResponseItem | McpApprovalRequestItem | McpCallItem | McpListToolsItem
MCP_ITEM_TYPES = frozenset(("mcp_approval_response", "mcp_approval_request", "mcp_call", "mcp_list_tools"))
