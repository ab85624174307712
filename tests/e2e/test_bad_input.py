"""Malformed and hostile requests over raw HTTP: always a clear 4xx, never a 500."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ErrorCheck = Callable[..., dict[str, Any]]
CHAT = "/v1/chat/completions"
GOOD_CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
NINE_MIB = 9 * 1024 * 1024


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "fake-model", "messages": [', None),
        (b"not json at all", None),
        (b"\xff\xfe\x00garbage", None),
        (b'[{"model": "fake-model"}]', None),
        (b'"just a string"', None),
        (b"", None),
        (b"{}", "model"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "fake-model"}', "messages"),
        (b'{"model": "fake-model", "messages": "hello"}', "messages"),
        (b'{"model": "fake-model", "messages": []}', "messages"),
        (b'{"model": "fake-model", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}',
            "max_tokens",
        ),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}', "temperature"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}', "top_p"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "tools": "x"}', "tools"),
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream_options": 1}',
            "stream_options",
        ),
    ],
)
def test_bad_chat_bodies(http: httpx.Client, assert_openai_error: ErrorCheck, body: bytes, param: str | None) -> None:
    response = http.post(CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "fake-model"}, "prompt"),
        ("/v1/completions", {"model": "fake-model", "prompt": 5}, "prompt"),
        ("/v1/completions", {"model": "fake-model", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "fake-model", "prompt": "x", "logprobs": 99}, "logprobs"),
        ("/v1/embeddings", {"model": "embed-model"}, "input"),
        ("/v1/embeddings", {"model": "embed-model", "input": []}, "input"),
        ("/v1/embeddings", {"model": "embed-model", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/embeddings", {"model": "embed-model", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_bad_completion_and_embedding_bodies(
    http: httpx.Client, assert_openai_error: ErrorCheck, path: str, body: dict[str, Any], param: str
) -> None:
    assert_openai_error(http.post(path, json=body), 400, param)


@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/embeddings"])
def test_unknown_model(http: httpx.Client, assert_openai_error: ErrorCheck, path: str) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}], "prompt": "x", "input": "x"}
    error = assert_openai_error(http.post(path, json=body), 404)
    assert error["code"] == "model_not_found"


def test_oversized_body_with_length(http: httpx.Client, assert_openai_error: ErrorCheck) -> None:
    body = b'{"model": "fake-model", "messages": [{"role": "user", "content": "' + b"a" * NINE_MIB + b'"}]}'
    error = assert_openai_error(http.post(CHAT, content=body), 413)
    assert error["code"] == "request_too_large"


def test_oversized_body_chunked(http: httpx.Client, assert_openai_error: ErrorCheck) -> None:
    # No Content-Length: the limit must hold while the body is read.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
        for _ in range(9):
            yield b"a" * (1024 * 1024)
        yield b'"}]}'

    assert_openai_error(http.post(CHAT, content=chunks()), 413)


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/nothing-here"), ("GET", "/nothing"), ("GET", "/v2/chat/completions")]
)
def test_unknown_path(http: httpx.Client, assert_openai_error: ErrorCheck, method: str, path: str) -> None:
    assert_openai_error(http.request(method, path, json=GOOD_CHAT), 404)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", CHAT), ("PUT", "/v1/embeddings"), ("DELETE", "/v1/models"), ("POST", "/v1/models")]
)
def test_wrong_method(http: httpx.Client, assert_openai_error: ErrorCheck, method: str, path: str) -> None:
    assert_openai_error(http.request(method, path, json=GOOD_CHAT), 405)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "sk-no-scheme", "Bearer sk-wrong-key", "Bearer sk-a sk-b", "Token sk-x"],
)
@pytest.mark.parametrize(("method", "path"), [("POST", CHAT), ("GET", "/v1/models"), ("GET", "/v1/models/fake-model")])
def test_bad_authorization(
    gateway: Any, assert_openai_error: ErrorCheck, authorization: str | None, method: str, path: str
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    response = httpx.request(method, gateway.url + path, json=GOOD_CHAT, headers=headers, timeout=10.0)
    error = assert_openai_error(response, 401)
    assert error["type"] == "authentication_error"


def test_auth_checked_before_the_body(gateway: Any, assert_openai_error: ErrorCheck) -> None:
    # An anonymous caller learns nothing about the body or the model list.
    response = httpx.post(gateway.url + CHAT, content=b"{broken", timeout=10.0)
    assert_openai_error(response, 401)
    response = httpx.post(gateway.url + CHAT, json={"model": "no-such-model", "messages": []}, timeout=10.0)
    assert_openai_error(response, 401)


def test_still_serving_after_bad_input(http: httpx.Client) -> None:
    for _ in range(3):
        http.post(CHAT, content=b"{nope")
        http.post(CHAT, content=b"[]")
    assert http.get("/healthz").json() == {"status": "ok"}
    response = http.post(CHAT, json=GOOD_CHAT)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith("Hello from the fake")


def _traffic_with(http: httpx.Client, prompt: str) -> list[httpx.Response]:
    """Requests that carry ``prompt`` through success, validation and upstream failure paths."""
    messages = [{"role": "user", "content": prompt}]
    sent = [
        http.post(CHAT, json={"model": "fake-model", "messages": messages}),
        http.post(CHAT, json={"model": "fake-model", "messages": messages, "stream": True}),
        http.post(CHAT, json={"model": "fake-model", "messages": messages, "temperature": 9}),
        http.post(CHAT, json={"model": "fake-model", "messages": [{"role": "wizard", "content": prompt}]}),
        http.post(CHAT, json={"model": "fake-model", "messages": prompt}),
        http.post(CHAT, content=b'{"model": "fake-model", "messages": [{"content": "' + prompt.encode() + b'"'),
        http.post(CHAT, json={"model": "rejects", "messages": messages}),
        http.post(CHAT, json={"model": "broken", "messages": messages}),
        http.post(CHAT, json={"model": "midstream", "messages": messages, "stream": True}),
        http.post("/v1/completions", json={"model": "fake-model", "prompt": prompt}),
        http.post("/v1/embeddings", json={"model": "embed-model", "input": prompt}),
        http.post("/v1/embeddings", json={"model": "embed-model", "input": prompt, "dimensions": -1}),
    ]
    return sent


def test_no_prompt_or_key_in_logs_or_errors(
    http: httpx.Client, gateway: Any, api_key: str, upstream_key: str
) -> None:
    prompt = "confidential-prompt-" + secrets.token_hex(12)
    responses = _traffic_with(http, prompt)
    assert [r.status_code for r in responses] == [200, 200, 400, 400, 400, 400, 400, 502, 200, 200, 200, 400]
    for response in responses:
        if response.status_code != 200:
            assert prompt not in response.text, f"error body echoes the prompt: {response.text[:300]}"
    assert http.get("/healthz").status_code == 200
    output = gateway.output()
    assert "Application startup complete" in output, "the gateway's output was not captured"
    for secret, what in ((prompt, "prompt"), (api_key, "client API key"), (upstream_key, "upstream API key")):
        assert secret not in output, f"the {what} appears in the gateway's output"
    assert not re.search(r"hmac-sha256:[0-9a-f]{64}", output), "a key hash appears in the gateway's output"


GOOD_CONFIG = """\
server: {port: 8399}
deployments:
  - {name: local, provider: openai, base_url: "http://127.0.0.1:9/v1", model: fake-model}
models:
  - {alias: fake-model, deployments: [local]}
tenants:
  - id: t1
    keys:
      - {id: k1, hash: "hmac-sha256:%s"}
""" % ("0" * 64)


def _sluicegate() -> str:
    path = shutil.which("sluicegate")
    assert path is not None, "the `sluicegate` console script is not on PATH (pip install -e .)"
    return path


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    config = tmp_path / "good.yaml"
    config.write_text(GOOD_CONFIG)
    done = subprocess.run([_sluicegate(), "config", "check", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert str(config) in done.stdout and "OK" in done.stdout


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("model: fake-model}", "model: fake-model, modle: x}", "modle"),
        ("models:", "aliases: []\nmodels:", "aliases"),
    ],
)
def test_config_check_names_unknown_key_and_file(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in GOOD_CONFIG
    config = tmp_path / "bad.yaml"
    config.write_text(GOOD_CONFIG.replace(old, new, 1))
    done = subprocess.run([_sluicegate(), "config", "check", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert str(config) in done.stderr, done.stderr
    assert f"`{key}`" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(GOOD_CONFIG.replace("server: {port: 8399}", "server: {port: 8399, prot: 1}"))
    done = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert str(config) in done.stderr and "`prot`" in done.stderr, done.stderr
