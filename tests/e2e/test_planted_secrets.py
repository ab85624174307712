"""A secret planted everywhere a client, an operator or an upstream can put one appears nowhere it should not.

The real server runs as a subprocess with tracing on (spans printed by the
console exporter), debug logging and the access log, in front of the fake
upstream. One distinctive string, ``PLANT``, is part of: the tenant's API key
and the key pepper; a wrong key (401); headers (an admin route's bearer
token, a made-up header, ``traceparent``, ``x-session-id``); prompts, field
names and values (``user``, ``metadata``); bodies that are not JSON or whose
fields have the wrong type (400); an unknown URL (404); the upstream's API
key. After successful, streamed, failed-upstream, 401, 400, 403 and 404
requests and a /metrics scrape, ``PLANT`` must not be in the server's stdout
(spans) or stderr (logs, access lines), the metrics, or any answer's body or
headers. The fake upstream answers with words of its own, never the prompt.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from router.auth import hash_api_key
from tests.e2e.conftest import REPO, START_TIMEOUT_S, STOP_TIMEOUT_S, Process, free_port

PLANT = "plnt" + secrets.token_hex(12)
TENANT_KEY = f"sk-{PLANT}-tenant"
PEPPER = f"pepper-{PLANT}"
UPSTREAM_KEY = f"sk-upstream-{PLANT}"
PEPPER_ENV = "SLUICEGATE_PLANTED_PEPPER"
UPSTREAM_ENV = "SLUICEGATE_PLANTED_UPSTREAM_KEY"
CHAT = "/v1/chat/completions"
ACCESS_FIELDS = {
    "trace_id", "request_id", "tenant", "key_id", "model", "deployment", "route", "status", "error", "stream",
    "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms", "config_version", "canary", "route_reason",
}  # fmt: skip


def _messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": f"the password is {PLANT}"}, {"role": "user", "content": f"repeat {PLANT} twice"}]


@dataclass
class Traffic:
    """What the client sent and got, and what the server wrote."""

    answers: list[httpx.Response] = field(default_factory=list)
    # What the server answered to bytes its HTTP parser refuses.
    raw: list[bytes] = field(default_factory=list)
    # Answers that went through the pipeline: (status, x-request-id; an error answer has none).
    served: list[tuple[int, str | None]] = field(default_factory=list)
    metrics: str = ""
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None


def _settings(upstream: str) -> dict[str, Any]:
    key = {"env": UPSTREAM_ENV}
    deployments = [
        {"name": "planted", "provider": "openai", "base_url": upstream, "model": "fake-normal", "api_key": key},
        {"name": "planted-broken", "provider": "openai", "base_url": upstream, "model": "error_500", "api_key": key},
        {"name": "planted-rejects", "provider": "openai", "base_url": upstream, "model": "error_400", "api_key": key},
        {"name": "planted-embed", "provider": "openai", "base_url": upstream, "model": "fake-embed", "api_key": key},
    ]
    return {
        "server": {"host": "127.0.0.1", "log_level": "debug"},
        "telemetry": {"tracing": True, "exporter": "console"},
        "auth": {"key_pepper": {"env": PEPPER_ENV}},
        "resilience": {"max_attempts": 1, "breaker_consecutive_failures": 1000, "breaker_min_requests": 1000},
        "deployments": deployments,
        "models": [
            {"alias": "planted-model", "deployments": ["planted"]},
            {"alias": "planted-broken", "deployments": ["planted-broken"]},
            {"alias": "planted-rejects", "deployments": ["planted-rejects"]},
            {"alias": "planted-embed", "deployments": ["planted-embed"]},
        ],
        "tenants": [{"id": "planted-tenant", "keys": [{"id": "planted-key", "hash": hash_api_key(TENANT_KEY, PEPPER.encode())}]}],
    }


def _start(workdir: Path, upstream: str) -> tuple[Process, Path, Path]:
    config = workdir / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(_settings(upstream)))
    port = free_port()
    out, err = workdir / "stdout.log", workdir / "stderr.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), PEPPER_ENV: PEPPER, UPSTREAM_ENV: UPSTREAM_KEY}
    args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        popen = subprocess.Popen(args, stdout=stdout, stderr=stderr, cwd=workdir, env=env)
    proc = Process(popen, err, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"the gateway exited with {popen.returncode}:\n{proc.output()[-4000:]}")
        try:
            if httpx.get(proc.url + "/readyz", timeout=1.0).status_code == 200:
                return proc, out, err
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"the gateway did not become ready:\n{proc.output()[-4000:]}")


def _send(http: httpx.Client, traffic: Traffic) -> None:
    auth = {"authorization": f"Bearer {TENANT_KEY}"}
    planted_headers = {
        **auth,
        "x-planted": PLANT,
        "x-session-id": f"session-{PLANT}",
        "traceparent": f"00-{PLANT}-0000000000000001-01",
        "user-agent": f"agent/{PLANT}",
    }
    messages = _messages()

    def served(response: httpx.Response) -> None:
        traffic.answers.append(response)
        traffic.served.append((response.status_code, response.headers.get("x-request-id")))

    def refused(response: httpx.Response) -> None:
        traffic.answers.append(response)

    # Answered: plain, with a prompt, headers, names and values that carry the secret.
    body = {"model": "planted-model", "messages": messages, "user": f"user-{PLANT}", "metadata": {"note": PLANT}, f"field_{PLANT}": 1}
    served(http.post(CHAT, json=body, headers=planted_headers))
    served(http.post("/v1/completions", json={"model": "planted-model", "prompt": f"say {PLANT}"}, headers=auth))
    served(http.post("/v1/embeddings", json={"model": "planted-embed", "input": f"embed {PLANT}"}, headers=auth))
    anthropic = {"model": "planted-model", "max_tokens": 16, "system": f"secret {PLANT}", "messages": [{"role": "user", "content": PLANT}]}
    served(http.post("/v1/messages", json=anthropic, headers={"x-api-key": TENANT_KEY, "x-planted": PLANT}))
    served(http.post("/v1/responses", json={"model": "planted-model", "input": f"respond {PLANT}", "store": False}, headers=auth))
    # Streamed, with its usage.
    stream = {"model": "planted-model", "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", CHAT, json=stream, headers=planted_headers) as response:
        response.read()
    served(response)
    # The upstream fails (500) or refuses (400).
    served(http.post(CHAT, json={"model": "planted-broken", "messages": messages}, headers=planted_headers))
    served(http.post(CHAT, json={"model": "planted-rejects", "messages": messages}, headers=planted_headers))
    # 401: a wrong key that carries the secret, as a bearer token and as Anthropic's header; none at all.
    refused(http.post(CHAT, json={"model": "planted-model", "messages": messages}, headers={"authorization": f"Bearer sk-wrong-{PLANT}"}))
    refused(http.post("/v1/messages", json=anthropic, headers={"x-api-key": f"sk-wrong-{PLANT}"}))
    refused(http.post(CHAT, json={"model": "planted-model", "messages": messages}, headers={"authorization": f"Basic {PLANT}"}))
    # An admin route: a bearer secret that is no key (401), the tenant's key that lacks the scope (403).
    refused(http.get("/admin/v1/tenants", headers={"authorization": f"Bearer {PLANT}"}))
    refused(http.get("/admin/v1/tenants", headers=auth))
    # 400: not JSON, cut-off JSON, and fields whose values are of the wrong kind.
    refused(http.post(CHAT, content=f'{{"model": "planted-model", "messages": [{{"content": "{PLANT}"'.encode(), headers=auth))
    refused(http.post(CHAT, content=f"{PLANT} is not JSON".encode(), headers=auth))
    refused(http.post(CHAT, content=b'{"model": "planted-model", "' + PLANT.encode() + b'\xff": 1}', headers=auth))
    for bad in (
        {"messages": [{"role": PLANT, "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": PLANT}]}]},
        {"messages": messages, "temperature": PLANT},
        {"messages": messages, "n": PLANT},
        {"messages": PLANT},
        {"messages": messages, "stream_options": {"include_usage": PLANT}},
    ):
        refused(http.post(CHAT, json={"model": "planted-model", **bad}, headers=auth))
    refused(http.post("/v1/messages", json={**anthropic, "messages": [{"role": PLANT, "content": "x"}]}, headers={"x-api-key": TENANT_KEY}))
    refused(http.post("/v1/embeddings", json={"model": "planted-embed", "input": "x", "encoding_format": PLANT}, headers=auth))
    # 404: an unknown URL that carries the secret; an unknown model.
    refused(http.get(f"/v1/{PLANT}", params={"key": PLANT}, headers=auth))
    refused(http.post(CHAT, json={"model": "no-such-model", "messages": messages}, headers=auth))


def _raw(url: str, payload: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Traffic]:
    workdir = tmp_path_factory.mktemp("planted")
    proc, out, err = _start(workdir, fake_server.url + "/v1")
    result = Traffic()
    try:
        with httpx.Client(base_url=proc.url, timeout=20.0) as http:
            _send(http, result)
            result.raw.append(_raw(proc.url, f"GET /v1/{PLANT} x HTTP/1.1\r\nHost: x\r\nX-Planted: {PLANT}\r\n\r\n".encode()))
            result.raw.append(_raw(proc.url, f"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad {PLANT}: v\r\n\r\n".encode()))
            result.metrics = http.get("/metrics").text
    finally:
        # Stopped before reading: the batched spans are written at shutdown.
        result.returncode = proc.stop()
        result.stdout = out.read_text(encoding="utf-8", errors="replace")
        result.stderr = err.read_text(encoding="utf-8", errors="replace")
    yield result


def test_the_traffic_got_the_answers_it_was_built_for(traffic: Traffic) -> None:
    assert all(answer.startswith(b"HTTP/1.1 400 ") for answer in traffic.raw), traffic.raw
    statuses = [r.status_code for r in traffic.answers]
    assert statuses == [200, 200, 200, 200, 200, 200, 502, 400, 401, 401, 401, 401, 403, *[400] * 11, 404, 404], statuses
    assert traffic.returncode == 0, traffic.stderr[-3000:]


def test_the_secret_is_in_no_answer(traffic: Traffic) -> None:
    assert all(PLANT.encode() not in answer for answer in traffic.raw)
    for response in traffic.answers:
        where = f"{response.request.method} {response.request.url.path[:40]} -> {response.status_code}"
        assert PLANT not in response.text, f"{where}: the body echoes the secret: {response.text[:300]}"
        for name, value in response.headers.items():
            assert PLANT not in name and PLANT not in value, f"{where}: header {name}"


def test_the_secret_is_in_no_log_span_or_metric(traffic: Traffic) -> None:
    assert "Application startup complete" in traffic.stderr, "the server's stderr was not captured"
    assert '"name": "chat planted-model"' in traffic.stdout or "planted-model" in traffic.stdout, "no span was printed"
    for text, where in ((traffic.stderr, "stderr (logs)"), (traffic.stdout, "stdout (spans)"), (traffic.metrics, "/metrics")):
        assert text, f"{where} is empty"
        position = text.find(PLANT)
        assert position < 0, f"the secret appears in {where}: ...{text[max(0, position - 300) : position + 100]}"
    hashes = re.findall(r"hmac-sha256:[0-9a-f]{64}", traffic.stderr + traffic.stdout + traffic.metrics)
    assert not hashes, "a key hash appears in the server's output"


def _log_lines(traffic: Traffic) -> list[dict[str, Any]]:
    lines = []
    for text in traffic.stderr.splitlines():
        entry = json.loads(text)  # every line the server logs is one JSON object
        assert isinstance(entry, dict) and {"ts", "level", "logger", "msg"} <= set(entry), text[:200]
        lines.append(entry)
    return lines


def test_every_log_line_is_json_and_every_request_has_one_access_line(traffic: Traffic) -> None:
    access = [line for line in _log_lines(traffic) if line["logger"] == "sluicegate.access"]
    assert all(set(line) == ACCESS_FIELDS | {"ts", "level", "logger", "msg"} for line in access), access[:2]
    assert len(access) == len(traffic.answers) + len(traffic.raw), [(a["status"], a["route"]) for a in access]
    pipeline = [line for line in access if line["request_id"] is not None]
    assert sorted(line["status"] for line in pipeline) == sorted(status for status, _ in traffic.served)
    by_id = {line["request_id"]: line for line in pipeline}
    for status, request_id in traffic.served:
        if request_id is not None:
            assert by_id[request_id]["status"] == status
    for line in pipeline:
        assert line["tenant"] == "planted-tenant" and line["key_id"] == "planted-key", line
        assert line["trace_id"] and line["trace_id"] in traffic.stdout.replace("0x", ""), "the access line names the request's trace"
        assert line["config_version"] is not None and line["cost_usd"] is not None and line["route_reason"]
        assert (line["deployment"] is not None) == (line["status"] == 200)  # a failed request has no serving deployment
    refused = sorted(line["status"] for line in access if line["request_id"] is None)
    assert refused == sorted([r.status_code for r in traffic.answers[len(traffic.served) :]] + [400] * len(traffic.raw))
    assert sum(line["error"] == "invalid_http" for line in access) == len(traffic.raw)
    assert all(line["tenant"] is None and line["route"] for line in access if line["request_id"] is None)
    streamed = [line for line in access if line["stream"]]
    assert len(streamed) == 1 and streamed[0]["ttft_ms"] is not None and streamed[0]["completion_tokens"]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_gateway_that_cannot_start_says_so_in_json_lines_by_type(tmp_path: Path, command: str) -> None:
    """Python and uvicorn would print the exception, message and all; the log has its type and stack only."""
    settings = _settings("http://127.0.0.1:9/v1")
    # SQLite cannot open a file there: the ledger fails as the gateway starts.
    settings["state"] = {"ledger_path": f"/proc/{PLANT}/ledger.sqlite", "ledger_spool_path": str(tmp_path / "spool")}
    config = tmp_path / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(settings))
    env = {**os.environ, "PYTHONPATH": str(REPO), PEPPER_ENV: PEPPER, UPSTREAM_ENV: UPSTREAM_KEY}
    args = [sys.executable, "-m", "router", command, "--config", str(config)] + (["--port", str(free_port())] if command == "serve" else [])
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=STOP_TIMEOUT_S * 4, check=False)
    assert done.returncode != 0
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert any(line.get("exc_type") == "OperationalError" and line["level"] == "critical" for line in lines), done.stderr[-2000:]
    assert done.stdout == "" and PLANT not in done.stderr
