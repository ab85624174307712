"""What a hostile tenant or a careless client sends, over real sockets: a clear 4xx, never a 500."""

from __future__ import annotations

import json
import secrets
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from router.decode import MAX_JSON_DEPTH

ErrorCheck = Callable[..., dict[str, Any]]
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("path", "template"),
    [
        (CHAT, '{"model": "fake-model", "messages": %s}'),
        (CHAT, '{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "vendor_extra": %s}'),
        (
            CHAT,
            '{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],'
            ' "tools": [{"type": "function", "function": {"name": "f", "parameters": {"x": %s}}}]}',
        ),
        ("/v1/completions", '{"model": "fake-model", "prompt": %s}'),
        ("/v1/completions", '{"model": "fake-model", "prompt": "hi", "logit_bias": {"1": %s}}'),
        ("/v1/embeddings", '{"model": "embed-model", "input": %s}'),
        ("/v1/embeddings", '{"model": "embed-model", "input": "hi", "user": %s}'),
    ],
)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deeply_nested_json_is_a_400_naming_the_limit(
    http: httpx.Client, assert_openai_error: ErrorCheck, path: str, template: str, depth: int
) -> None:
    response = http.post(path, content=(template % _nested(depth)).encode(), headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert str(MAX_JSON_DEPTH) in error["message"]
    assert error["code"] == "invalid_json"


def test_nesting_within_the_limit_is_served(http: httpx.Client) -> None:
    # A deep (but allowed) tool schema reaches the upstream like any other field.
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_JSON_DEPTH // 2 - 6):
        schema = {"type": "object", "properties": {"x": schema}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    response = http.post(CHAT, json={"model": "fake-model", "messages": MESSAGES, "tools": [tool]})
    assert response.status_code == 200, response.text


def _urllib_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("size", [9 * 1024 * 1024, 40 * 1024 * 1024])
def test_oversized_body_reaches_a_blocking_client_as_413(gateway: Any, api_key: str, size: int) -> None:
    # urllib writes the whole body before it reads a byte of the answer: a server
    # that answers and closes early leaves it with a reset, not a status.
    body = b'{"model": "fake-model", "messages": [{"role": "user", "content": "' + b"a" * size + b'"}]}'
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    status, answer = _urllib_post(gateway.url + CHAT, body, headers)
    assert status == 413
    assert json.loads(answer)["error"]["code"] == "request_too_large"


def _raw(gateway: Any, payload: bytes) -> bytes:
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "payload",
    [
        b"FROBNICATE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
        b"GET /v1/mod els HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello on the plain port
        b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    ],
    ids=[
        "unknown-method", "control-byte-in-header", "space-in-header-name", "space-in-url", "http-9.9", "tls-hello", "long-url",
        "double-length",
    ],
)
def test_requests_the_http_parser_refuses_get_the_openai_error_shape(gateway: Any, payload: bytes) -> None:
    answer = _raw(gateway, payload)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1][:1] == b"4", answer[:300]
    assert b"content-type: application/json" in head.lower(), answer[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}


def test_client_controlled_field_names_cannot_forge_log_lines(http: httpx.Client, gateway: Any) -> None:
    marker = "forged-" + secrets.token_hex(6)
    secret = "sk-live-" + secrets.token_hex(16)
    injected = 'x\n{"level": "error", "logger": "sluicegate", "msg": "%s"}\r\nHTTP/1.1 200 OK' % marker
    body = {"model": "fake-model", "messages": MESSAGES, injected: 1, secret: 2, "vendor_tuning_knob": 3}
    assert http.post(CHAT, json=body).status_code == 200
    assert http.get("/healthz").status_code == 200
    output = gateway.output()
    assert secret not in output, "a secret sent as a field name reached the log"
    assert "vendor_tuning_knob" in output, "plain unknown field names are still reported"
    for line in output.splitlines():
        assert not line.startswith('{"level"'), f"a client wrote a line of its own: {line[:200]}"
        if marker in line:
            entry = json.loads(line)  # only ever inside a JSON string, escaped
            assert entry.get("msg") != marker
