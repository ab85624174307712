"""MCP tools in the Responses API: the official openai SDK against a running gateway with the mcp plugin.

The model is a fake chat upstream that calls a tool when it is offered some
(tests/fakes/tool_chat.py) and then answers quoting the tool's result; the
tool server is the well-behaved upstream MCP server of tests/fakes/mcp_upstreams.py.
Tenants: ``acme`` (the whole server, PII redacted), ``nogrant`` (nothing).
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from router.auth import hash_api_key
from tests.e2e.conftest import UPSTREAM_KEY_ENV, Process, free_port, serve, spawn

ACME_KEY = "sk-mcpr-acme-" + secrets.token_hex(16)
NOGRANT_KEY = "sk-mcpr-nogrant-" + secrets.token_hex(16)
MODEL = "tool-model"


def _settings(chat: str, mcp: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1"},
        "deployments": [{"name": "tools", "provider": "openai", "base_url": chat + "/v1", "model": MODEL}],
        "models": [{"alias": MODEL, "deployments": ["tools"]}],
        "tenants": [
            {
                "id": "acme", "mcp_tools": ["good/*"], "pii": {"action": "redact", "entities": ["EMAIL_ADDRESS"]},
                "keys": [{"id": "acme-key", "hash": hash_api_key(ACME_KEY), "scopes": ["tenant:read"]}],
            },
            {"id": "nogrant", "keys": [{"id": "nogrant-key", "hash": hash_api_key(NOGRANT_KEY)}]},
        ],
        "plugins": [
            {
                "name": "mcp",
                "options": {
                    "timeout_s": 5,
                    "servers": [{"name": "good", "url": mcp + "/mcp", "headers": {"X-Upstream-Key": {"env": UPSTREAM_KEY_ENV}}}],
                },
            }
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("mcp-responses")
    port = free_port()
    mcp_args = [sys.executable, "-m", "tests.fakes.mcp_upstreams", "good", "--port", str(port), "--expect-key-env", UPSTREAM_KEY_ENV]
    mcp = spawn(mcp_args, tmp / "mcp.log", f"http://127.0.0.1:{port}", "/healthz")
    port = free_port()
    chat = spawn(
        [sys.executable, "-m", "tests.fakes.tool_chat", "--port", str(port)], tmp / "chat.log", f"http://127.0.0.1:{port}", "/v1/models"
    )
    proc = serve(_settings(chat.url, mcp.url), tmp)
    yield proc
    for p in (proc, chat, mcp):
        p.stop()


def _client(gateway: Process, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=30.0)


def _mcp(approval: str = "never", label: str = "good", **extra: Any) -> Any:
    return {"type": "mcp", "server_label": label, "server_url": "https://ignored.example/mcp", "require_approval": approval, **extra}


def _function(name: str) -> Any:
    return {"type": "function", "name": name, "parameters": {"type": "object", "properties": {}}}


def _body(exc: openai.APIStatusError) -> dict[str, Any]:
    body: dict[str, Any] = exc.body  # type: ignore[assignment]
    return body


def _types(response: Response) -> list[str]:
    return [item.type for item in response.output]


def test_the_gateway_lists_calls_and_answers(gateway: Process) -> None:
    with _client(gateway) as client:
        response = client.responses.create(model=MODEL, input="hello there", tools=[_mcp()])
    assert response.status == "completed"
    assert _types(response) == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, _ = response.output
    assert listed.type == "mcp_list_tools" and listed.server_label == "good" and listed.error is None
    assert {"echo", "add", "contact"} <= {t.name for t in listed.tools}
    assert call.type == "mcp_call" and call.name == "echo" and call.server_label == "good"
    assert call.output == "hello there" and call.error is None and call.status == "completed"
    assert response.output_text == "The tool said: hello there"
    assert response.usage is not None and response.usage.total_tokens > 0
    assert [t.type for t in response.tools] == ["mcp"]


def test_allowed_tools_limit_what_the_model_sees(gateway: Process) -> None:
    with _client(gateway) as client:
        response = client.responses.create(model=MODEL, input='call:add {"a": 2, "b": 3}', tools=[_mcp(allowed_tools=["add"])])
    listed, call, _ = response.output
    assert listed.type == "mcp_list_tools" and [t.name for t in listed.tools] == ["add"]
    assert call.type == "mcp_call" and call.output == "5"
    assert response.output_text == "The tool said: 5"


def test_the_tenants_pii_policy_applies_to_tool_results(gateway: Process) -> None:
    with _client(gateway) as client:
        response = client.responses.create(model=MODEL, input="call:contact {}", tools=[_mcp()])
    call = response.output[1]
    assert call.type == "mcp_call" and call.output is not None
    assert "alice.smith@example.com" not in call.output and "<EMAIL_ADDRESS_1>" in call.output


def test_an_approval_request_and_its_answer_resume_the_loop(gateway: Process) -> None:
    with _client(gateway) as client:
        first = client.responses.create(model=MODEL, input="approve me", tools=[_mcp("always")])
        assert _types(first) == ["mcp_list_tools", "mcp_approval_request"]
        asked = first.output[1]
        assert asked.type == "mcp_approval_request" and asked.name == "echo"
        answer: Any = {"type": "mcp_approval_response", "approval_request_id": asked.id, "approve": True}
        second = client.responses.create(model=MODEL, previous_response_id=first.id, input=[answer], tools=[_mcp("always")])
    assert _types(second) == ["mcp_call", "message"]
    call = second.output[0]
    assert call.type == "mcp_call" and call.approval_request_id == asked.id and call.output == "approve me"
    assert second.output_text == "The tool said: approve me"


def test_a_declined_call_is_not_made(gateway: Process) -> None:
    with _client(gateway) as client:
        first = client.responses.create(model=MODEL, input="decline me", tools=[_mcp("always")])
        answer: Any = {"type": "mcp_approval_response", "approval_request_id": first.output[1].id, "approve": False}
        second = client.responses.create(model=MODEL, previous_response_id=first.id, input=[answer], tools=[_mcp("always")])
        assert _types(second) == ["message"]
        assert second.output_text == "The tool said: The user declined this tool call."
        with pytest.raises(openai.BadRequestError) as again:  # an approval request is answered once
            client.responses.create(model=MODEL, previous_response_id=second.id, input=[answer], tools=[_mcp("always")])
    assert _body(again.value)["param"] == "input[0].approval_request_id"


def test_function_tools_stay_the_clients(gateway: Process) -> None:
    lookup: Any = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    with _client(gateway) as client:
        response = client.responses.create(model=MODEL, input="call:lookup {}", tools=[_mcp(), lookup])
    assert _types(response) == ["mcp_list_tools", "function_call"]
    assert response.output[1].type == "function_call" and response.output[1].name == "lookup"
    assert [t.type for t in response.tools] == ["mcp", "function"]


def test_a_server_not_granted_is_a_400_naming_the_label_only(gateway: Process) -> None:
    errors = {}
    for key, label in ((NOGRANT_KEY, "good"), (ACME_KEY, "ghost")):
        with _client(gateway, key) as client, pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=MODEL, input="hi", tools=[_function("f"), _mcp(label=label)])
        body = _body(refused.value)
        assert body["param"] == "tools[1].server_label" and body["code"] == "mcp_server_not_found"
        errors[label] = body["message"].replace(label, "<label>")
    # Not configured and not granted read alike: the answer tells another tenant's server from none.
    assert errors["good"] == errors["ghost"]


def test_client_credentials_are_refused(gateway: Process) -> None:
    with _client(gateway) as client, pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="hi", tools=[_mcp(authorization="token")])
    assert _body(refused.value)["param"] == "tools[0].authorization"


def test_a_stream_has_the_mcp_events(gateway: Process) -> None:
    with _client(gateway) as client:
        events = list(client.responses.create(model=MODEL, input="streamed", tools=[_mcp()], stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for kind in ("response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed", "response.mcp_call.in_progress",
                 "response.mcp_call.completed", "response.output_text.delta"):  # fmt: skip
        assert kind in kinds, kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert _types(final) == ["mcp_list_tools", "mcp_call", "message"]
    assert final.output_text == "The tool said: streamed"
    with _client(gateway) as client:  # stored before the stream ended, as a unary response is
        assert client.responses.retrieve(final.id).output_text == "The tool said: streamed"


def test_a_tool_call_is_audited_in_the_clients_trace(gateway: Process) -> None:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    with _client(gateway) as client:
        client.responses.create(model=MODEL, input="audit me", tools=[_mcp()], extra_headers=headers)
    deadline = time.monotonic() + 5
    entries: list[dict[str, Any]] = []
    while not entries and time.monotonic() < deadline:
        listing = httpx.get(gateway.url + "/admin/v1/audit?limit=100", headers={"authorization": f"Bearer {ACME_KEY}"}, timeout=10).json()
        entries = [e["new"] for e in listing["data"] if e["action"] == "mcp.tool_call" and e["new"].get("trace_id") == trace_id]
        time.sleep(0.1)
    assert entries and entries[0]["tool"] == "good__echo" and entries[0]["status"] == "ok" and entries[0]["key"] == "acme-key"
