"""The Responses API's ``mcp`` tools: decoding, approval policy, grants by label, and MCP items as chat messages."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from core.config import PluginConfig
from core.errors import InvalidRequest
from core.plugin import NoOptions, Plugin, ToolListing, ToolResult, ToolSpec
from core.principal import Principal
from router.plugins import Loaded, PluginSet
from router.responses_mcp_plan import McpServer, approved, echo_tools, function_names, resolve
from router.responses_mcp_wire import McpTool, take_mcp_tools
from router.responses_surface import DECLINED, chat_messages

ACME = Principal(tenant="acme", key_id="k")


def _tool(**fields: Any) -> McpTool:
    return msgspec.convert({"type": "mcp", "server_label": "docs", **fields}, McpTool)


def test_a_request_without_mcp_tools_is_left_as_it_is() -> None:
    raw: dict[str, Any] = {"model": "m", "tools": [{"type": "function", "name": "f"}]}
    assert take_mcp_tools(raw) is None and raw["tools"] == [{"type": "function", "name": "f"}]
    assert take_mcp_tools({"model": "m"}) is None


def test_mcp_tools_are_taken_out_with_their_places() -> None:
    raw: dict[str, Any] = {
        "tools": [{"type": "function", "name": "f"}, {"type": "mcp", "server_label": "docs", "require_approval": "never"}]
    }
    taken = take_mcp_tools(raw)
    assert taken is not None and [(i, t.server_label) for i, t in taken] == [(1, "docs")]
    assert raw["tools"] == [{"type": "function", "name": "f"}]
    only: dict[str, Any] = {"tools": [{"type": "mcp", "server_label": "docs"}]}
    assert take_mcp_tools(only) is not None and "tools" not in only


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "mcp", "server_label": "docs", "authorization": "t"}, "tools[0].authorization"),
        ({"type": "mcp", "server_label": "docs", "headers": {"Authorization": "t"}}, "tools[0].headers"),
        ({"type": "mcp", "server_label": "docs", "require_approval": "sometimes"}, "tools[0].require_approval"),
        ({"type": "mcp"}, "server_label"),
    ],
)
def test_a_bad_mcp_tool_is_a_400_naming_the_field(tool: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        take_mcp_tools({"tools": [tool]})
    assert refused.value.param == param


def test_a_label_sent_twice_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="listed twice"):
        take_mcp_tools({"tools": [{"type": "mcp", "server_label": "docs"}, {"type": "mcp", "server_label": "docs"}]})


def test_approval_is_required_unless_the_policy_says_never() -> None:
    read_only = {"readOnlyHint": True}
    assert _tool().needs_approval("search", None)
    assert _tool(require_approval="always").needs_approval("search", None)
    assert not _tool(require_approval="never").needs_approval("search", None)
    policy = _tool(require_approval={"never": {"tool_names": ["search"]}})
    assert not policy.needs_approval("search", None) and policy.needs_approval("delete", None)
    by_hint = _tool(require_approval={"never": {"read_only": True}})
    assert not by_hint.needs_approval("search", read_only) and by_hint.needs_approval("delete", None)
    both = _tool(require_approval={"always": {"tool_names": ["search"]}, "never": {"read_only": True}})
    assert both.needs_approval("search", read_only)


def test_allowed_tools_by_name_or_filter() -> None:
    assert _tool().allows("anything", None)
    assert _tool(allowed_tools=["a"]).allows("a", None) and not _tool(allowed_tools=["a"]).allows("b", None)
    hint = _tool(allowed_tools={"read_only": True})
    assert hint.allows("a", {"readOnlyHint": True}) and not hint.allows("b", None)


class _Provider:
    def __init__(self, label: str, tools: list[str]) -> None:
        self.label = label
        self.tools = tools
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def list_tools(self, principal: Principal, server_label: str) -> ToolListing | None:
        if server_label != self.label or principal.tenant != "acme":
            return None
        return ToolListing(tools=[ToolSpec(name=n, input_schema={"type": "object"}) for n in self.tools])

    async def call_tool(
        self, principal: Principal, server_label: str, name: str, arguments: dict[str, Any], *, trace_id: str | None = None
    ) -> ToolResult:
        self.calls.append((server_label, name, arguments))
        return ToolResult(output="ok")


class _ToolPlugin(Plugin):
    name = "tools"
    provider = _Provider("docs", ["search", "delete"])

    def tool_provider(self) -> _Provider:
        return self.provider


def _set(*plugins: type[Plugin]) -> PluginSet:
    pairs = []
    for cls in plugins:
        loaded = Loaded(PluginConfig(name=cls.name), cls, NoOptions())
        pairs.append((loaded, cls(NoOptions(), None)))  # type: ignore[arg-type]
    return PluginSet(tuple(pairs))


class _Plain(Plugin):
    name = "plain"


async def test_a_plugin_set_asks_only_plugins_that_offer_tools() -> None:
    assert _set(_Plain).tool_providers == ()
    plugins = _set(_Plain, _ToolPlugin)
    assert plugins.tool_providers == (_ToolPlugin.provider,)
    found = await plugins.tool_server(ACME, "docs")
    assert found is not None and [t.name for t in found[1].tools] == ["search", "delete"]
    assert await plugins.tool_server(ACME, "ghost") is None


async def test_a_label_nobody_serves_is_a_400_naming_it_alone() -> None:
    plugins = _set(_ToolPlugin)
    servers = await resolve(plugins, ACME, [(0, _tool(allowed_tools=["search"]))])
    assert list(servers[0].tools) == ["search"]
    messages = []
    for principal, label in ((Principal(tenant="other", key_id="k"), "docs"), (ACME, "ghost")):
        with pytest.raises(InvalidRequest) as refused:
            await resolve(plugins, principal, [(2, _tool(server_label=label))])
        assert refused.value.param == "tools[2].server_label" and refused.value.code == "mcp_server_not_found"
        messages.append(refused.value.message.replace(label, "<label>"))
    assert messages[0] == messages[1]


def _server() -> McpServer:
    return McpServer(_tool(), _Provider("docs", []), ToolListing(tools=[]), {})


def _asked(request_id: str, label: str = "docs") -> dict[str, Any]:
    return {"type": "mcp_approval_request", "id": request_id, "server_label": label, "name": "search", "arguments": "{}"}


def _answer(request_id: str, approve: bool = True) -> dict[str, Any]:
    return {"type": "mcp_approval_response", "id": "a", "approval_request_id": request_id, "approve": approve}


def test_approvals_name_requests_of_the_conversation_answered_once() -> None:
    history = [_asked("r1"), _asked("r2"), _asked("r3", "other")]
    assert approved(history, [_answer("r1"), _answer("r2", approve=False)], [_server()]) == [history[0]]
    for items, history_, what in (
        ([_answer("nope")], history, "No MCP approval request"),
        ([_answer("r1")], [*history, _answer("r1")], "answered before"),
        ([_answer("r3")], history, "which `tools` does not include"),
    ):
        with pytest.raises(InvalidRequest, match=what) as refused:
            approved(history_, items, [_server()])
        assert refused.value.param == "input[0].approval_request_id"


def test_mcp_items_become_tool_calls_and_results() -> None:
    call = {"type": "mcp_call", "id": "mcp_1", "server_label": "docs", "name": "search", "arguments": "{}", "output": "found"}
    failed = {
        **call,
        "id": "mcp_2",
        "output": None,
        "error": {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": "boom"}]},
    }
    listed = {"type": "mcp_list_tools", "id": "l", "server_label": "docs", "tools": []}
    messages = chat_messages(None, [listed, call, failed, _asked("r1"), _answer("r1", approve=False)])
    assert messages == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "mcp_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "mcp_1", "content": "found"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "mcp_2", "type": "function", "function": {"name": "search", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "mcp_2", "content": "boom"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "r1", "type": "function", "function": {"name": "search", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "r1", "content": DECLINED},
    ]


def test_the_echo_keeps_the_tools_in_the_order_sent() -> None:
    functions = [{"type": "function", "name": "f"}, {"type": "function", "name": "g"}]
    echoed = echo_tools(functions, [(1, _tool(require_approval="never"))])
    assert [t.get("name", t.get("server_label")) for t in echoed] == ["f", "docs", "g"]
    assert echoed[1] == {"type": "mcp", "server_label": "docs", "require_approval": "never"}


def testfunction_names_are_unique_and_chat_safe() -> None:
    specs = {n: ToolSpec(name=n, input_schema={}) for n in ("search", "files.read", "lookup")}
    docs = McpServer(_tool(), _Provider("docs", []), ToolListing(tools=[]), specs)
    wiki = McpServer(_tool(server_label="wiki"), _Provider("wiki", []), ToolListing(tools=[]), {"search": specs["search"]})
    names = function_names([docs, wiki], {"lookup"})
    assert {name: (server.label, spec.name) for name, (server, spec) in names.items()} == {
        "search": ("docs", "search"),
        "files_read": ("docs", "files.read"),
        "docs__lookup": ("docs", "lookup"),
        "wiki__search": ("wiki", "search"),
    }
