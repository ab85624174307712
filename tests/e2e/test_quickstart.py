"""The README quickstart: `sluicegate serve` with no config answers a chat request offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from router.defaults import DEV_API_KEY, LOCAL_ALIAS
from tests.e2e.conftest import free_port

pytest.importorskip("llama_cpp", reason="the local model needs the `local` engine (scripts/install.sh)")


def test_embedded_defaults_answer_with_the_local_model(tmp_path: Path) -> None:
    port = free_port()
    command = shutil.which("sluicegate") or sys.executable
    args = [command, "serve", "--port", str(port)] if command != sys.executable else [command, "-m", "router", "serve", "--port", str(port)]
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=DEV_API_KEY, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == [LOCAL_ALIAS]
        reply = client.chat.completions.create(
            model=LOCAL_ALIAS,
            temperature=0,
            messages=[
                {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert reply.usage is not None and reply.usage.completion_tokens > 0
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
        log.close()
    printed = (tmp_path / "serve.log").read_text()
    assert f"http://127.0.0.1:{port}/v1" in printed and "models: smollm2" in printed
    assert DEV_API_KEY not in printed
    assert (tmp_path / "sluicegate-ledger.sqlite").exists()  # embedded state lives in the working directory
