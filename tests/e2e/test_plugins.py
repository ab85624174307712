"""Plugins as a third party ships them: a distribution of its own, found through its entry points.

tests/plugins/sample is built and installed into a directory of its own (pip,
offline, no dependencies), which the gateway process gets on its import
path; nothing about it is known to the gateway but the config's `plugins:`
list. Its plugins record every hook call to a file, refuse and answer
prompts, fail (raise, or run past their timeout), serve a route, run a
worker and offer an engine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest

from tests.e2e.conftest import API_KEY, REPO, UPSTREAM_KEY, UPSTREAM_KEY_ENV, Process, free_port, gateway_config, serve

SAMPLE = REPO / "tests" / "plugins" / "sample"


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sample distribution, built and installed as pip installs any plugin (into a directory of its own)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target),
         str(SAMPLE)],
        capture_output=True, text=True, timeout=240, cwd=build, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(target.glob("sluicegate_sample_plugin-*.dist-info")), "pip left no distribution metadata"
    return str(target)


def _settings(upstream: str, events: Path, heartbeat: Path) -> dict[str, Any]:
    settings = gateway_config(upstream)
    settings["plugins"] = [
        {"name": "sample-first", "options": {"tag": "first", "events_path": str(events)}},
        {"name": "sample-second", "options": {"tag": "second", "events_path": str(events)}},
        {"name": "sample-guard"},
        {"name": "sample-routes", "options": {"heartbeat_path": str(heartbeat)}},
    ]
    settings["deployments"].append({"name": "echo", "provider": "plugin", "model": "echo-1", "options": {"engine": "echo"}})
    settings["models"].append({"alias": "echo-model", "deployments": ["echo"]})
    return settings


@pytest.fixture(scope="module")
def plugged(tmp_path_factory: pytest.TempPathFactory, fake_server: Process, sample_path: str) -> Iterator[tuple[Process, Path, Path]]:
    workdir = tmp_path_factory.mktemp("plugged")
    events, heartbeat = workdir / "events.jsonl", workdir / "heartbeat"
    proc = serve(_settings(fake_server.url + "/v1", events, heartbeat), workdir, path=[sample_path])
    yield proc, events, workdir
    proc.stop()


@pytest.fixture
def client(plugged: tuple[Process, Path, Path]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=plugged[0].url + "/v1", api_key=API_KEY, max_retries=0, timeout=20.0) as sdk:
        yield sdk


def _events(events: Path, request_id: str, want: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The hook calls recorded for one request, once there are ``want`` of them (after_settle runs after the answer)."""
    deadline = time.monotonic() + timeout_s
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lines = events.read_text().splitlines() if events.exists() else []
        found = [e for e in map(json.loads, lines) if e["request_id"] == request_id]
        if len(found) >= want:
            return found
        time.sleep(0.05)
    return found


def test_hooks_run_in_pipeline_order_and_config_order(client: openai.OpenAI, plugged: tuple[Process, Path, Path]) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content
    request_id = raw.headers["x-request-id"]
    found = _events(plugged[1], request_id, 10)
    # Per hook the config's order; the hooks in pipeline order (the ledger row is written as the request settles).
    hooks = ("after_auth", "before_route", "before_serve", "on_ledger_row", "after_settle")
    assert [(e["hook"], e["tag"]) for e in found] == [(h, t) for h in hooks for t in ("first", "second")]
    first = found[0]
    assert (first["tenant"], first["alias"]) == ("e2e", "fake-model")
    settled = [e for e in found if e["hook"] == "after_settle"]
    # after_settle sees the final outcome and the state hooks shared for this request.
    assert all(e["status"] == 200 and e["deployment"] == "fake" and e["seen"] == ["first", "second"] for e in settled)


def test_on_chunk_sees_every_streamed_chunk_and_may_change_it(client: openai.OpenAI, plugged: tuple[Process, Path, Path]) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="fake-model", messages=[{"role": "user", "content": "please shout"}], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert "HELLO" in text and "Hello" not in text  # the guard's on_chunk rewrote every chunk
    chunks = [e for e in _events(plugged[1], request_id, 8) if e["hook"] == "on_chunk"]
    assert len(chunks) >= 4 and {e["tag"] for e in chunks} == {"first", "second"}


def test_a_refusal_is_the_routes_own_error_shape(client: openai.OpenAI, plugged: tuple[Process, Path, Path]) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "this is forbidden"}])
    assert caught.value.status_code == 403 and caught.value.code == "guard_refused"
    with anthropic.Anthropic(base_url=plugged[0].url, api_key=API_KEY, max_retries=0) as claude:
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            claude.messages.create(model="fake-model", max_tokens=20, messages=[{"role": "user", "content": "forbidden again"}])
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "permission_error"


def test_a_reply_answers_in_place_of_the_model_streamed_or_not(client: openai.OpenAI, plugged: tuple[Process, Path, Path]) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fake-model", messages=[{"role": "user", "content": "canned please"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "A canned answer." and completion.model == "fake-model"
    assert raw.headers["x-sluicegate-deployment"] == "plugin:sample-guard"
    stream = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "canned, streamed"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "A canned answer."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 6
    # The Responses surface renders the same reply in its own shape.
    response = client.responses.create(model="fake-model", input="canned via responses")
    assert response.output_text == "A canned answer."


def test_a_hook_may_rewrite_the_body_before_routing(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "please rewrite this"}])
    assert answer.choices[0].message.content == "echo: rewritten by the guard"


def test_a_plugin_engine_serves_a_deployment(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "ping"}])
    assert answer.choices[0].message.content == "echo: ping" and answer.usage is not None
    stream = client.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "pong"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: pong"


def test_a_plugin_route_and_worker(plugged: tuple[Process, Path, Path]) -> None:
    proc, _, workdir = plugged
    whoami = httpx.get(proc.url + "/sample/whoami", headers={"authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert whoami.status_code == 200 and whoami.json() == {"tenant": "e2e"}
    assert httpx.get(proc.url + "/sample/whoami", headers={"authorization": "Bearer sk-wrong"}, timeout=10).status_code == 401
    role, beats = (workdir / "heartbeat").read_text().split()
    time.sleep(0.6)
    assert role == "serve" and int((workdir / "heartbeat").read_text().split()[1]) > int(beats)


def test_sluicegate_worker_runs_plugin_workers_without_http(tmp_path: Path, fake_server: Process, sample_path: str) -> None:
    events, heartbeat = tmp_path / "events.jsonl", tmp_path / "heartbeat"
    config = tmp_path / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(_settings(fake_server.url + "/v1", events, heartbeat)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), sample_path]), "PYTHONUNBUFFERED": "1", UPSTREAM_KEY_ENV: UPSTREAM_KEY}
    log = (tmp_path / "worker.log").open("wb")
    port = free_port()
    argv = [sys.executable, "-m", "router", "worker", "--config", str(config), "--metrics-port", str(port)]
    worker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        _wait(lambda: heartbeat.exists() and heartbeat.read_text().startswith("worker ") and int(heartbeat.read_text().split()[1]) > 2, 30)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "sluicegate_config_version" in metrics and "sluicegate_plugin_hook_seconds" in metrics
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert code == 0, output
    assert "worker started: plugins sample-first, sample-second, sample-guard, sample-routes" in output


def test_plugins_reload_with_the_config(client: openai.OpenAI, plugged: tuple[Process, Path, Path]) -> None:
    proc, events, workdir = plugged
    config = workdir / "sluicegate.yaml"
    settings = msgspec.yaml.decode(config.read_bytes())
    original = msgspec.yaml.encode(settings)
    try:
        settings["plugins"] = [p for p in settings["plugins"] if p["name"] not in ("sample-guard", "sample-routes")]
        settings["deployments"] = [d for d in settings["deployments"] if d["name"] != "echo"]
        settings["models"] = [m for m in settings["models"] if m["alias"] != "echo-model"]
        config.write_bytes(msgspec.yaml.encode(settings))
        _wait(lambda: httpx.get(proc.url + "/sample/whoami", headers={"authorization": f"Bearer {API_KEY}"}).status_code == 404)
        # The guard is gone: a prompt it refused now reaches the model.
        assert client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "forbidden"}]).choices
    finally:
        config.write_bytes(original)
    _wait(lambda: httpx.get(proc.url + "/sample/whoami", headers={"authorization": f"Bearer {API_KEY}"}).status_code == 200)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "forbidden"}])


def _wait(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("the config change was not applied in time")


@pytest.mark.parametrize(("on_error", "mode", "status", "reason"), [
    ("fail_open", "raise", 200, "error"),
    ("fail_closed", "raise", 503, "error"),
    ("fail_open", "sleep", 200, "timeout"),
])  # fmt: skip
def test_a_failing_plugin_is_isolated_as_configured(
    tmp_path: Path, fake_server: Process, sample_path: str, on_error: str, mode: str, status: int, reason: str
) -> None:
    settings = gateway_config(fake_server.url + "/v1")
    settings["plugins"] = [{"name": "sample-raiser", "on_error": on_error, "timeout_s": 0.3, "options": {"mode": mode}}]
    proc = serve(settings, tmp_path, path=[sample_path])
    try:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(proc.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {API_KEY}"}, timeout=20)
        assert answer.status_code == status, answer.text
        if status == 503:
            assert answer.json()["error"]["code"] == "plugin_failed"
            assert "the raiser plugin always fails" not in answer.text
        metrics = httpx.get(proc.url + "/metrics", timeout=10).text
        pattern = rf'sluicegate_plugin_errors_total{{hook="after_auth",plugin="sample-raiser",reason="{reason}"}} 1\.0'
        assert re.search(pattern, metrics), [line for line in metrics.splitlines() if "plugin" in line]
        assert "sluicegate_plugin_hook_seconds_count" in metrics
        # The gateway is still up and serving.
        assert httpx.get(proc.url + "/healthz", timeout=5).status_code == 200
    finally:
        proc.stop()


def test_a_plugin_for_another_interface_version_is_refused_at_start(tmp_path: Path, fake_server: Process, sample_path: str) -> None:
    settings = gateway_config(fake_server.url + "/v1")
    settings["plugins"] = [{"name": "sample-old"}]
    config = tmp_path / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(settings))
    env = {"PYTHONPATH": f"{REPO}:{sample_path}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "router", "config", "check", str(config)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "plugins[0].name" in done.stderr and "built for plugin interface 99" in done.stderr and "speaks 1" in done.stderr, done.stderr
    # `serve` refuses it the same way, before binding a port.
    serve_cmd = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", "1"]
    refused = subprocess.run(serve_cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert refused.returncode == 2 and "built for plugin interface 99" in refused.stderr, refused.stderr
    settings["plugins"] = [{"name": "sample-nonesuch"}]
    config.write_bytes(msgspec.yaml.encode(settings))
    done = subprocess.run(
        [sys.executable, "-m", "router", "config", "check", str(config)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert (
        done.returncode != 0 and "no installed plugin is named 'sample-nonesuch'" in done.stderr and "sample-guard" in done.stderr
    ), done.stderr
