"""A batch on the embedded defaults: `sluicegate serve` with no config runs it on the local llama.cpp model."""

from __future__ import annotations

import json
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

QUESTIONS = ["What is the capital of France?", "What is the capital of Italy?", "What is the capital of Spain?"]


def test_a_batch_runs_on_the_local_model(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--port", str(port)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=DEV_API_KEY, max_retries=0, timeout=60)
        lines = [
            {
                "custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": LOCAL_ALIAS, "temperature": 0, "max_tokens": 24, "messages": [
                    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
                    {"role": "user", "content": question},
                ]},
            }
            for i, question in enumerate(QUESTIONS)
        ]  # fmt: skip
        uploaded = client.files.create(file=("local.jsonl", "\n".join(json.dumps(x) for x in lines).encode()), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 90
        while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
            time.sleep(0.25)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed", batch
        assert batch.output_file_id is not None
        results = {r["custom_id"]: r for r in map(json.loads, client.files.content(batch.output_file_id).text.splitlines())}
        assert set(results) == {"q0", "q1", "q2"}
        answer = results["q0"]["response"]["body"]["choices"][0]["message"]["content"]
        assert "Paris" in answer
        assert all(r["response"]["body"]["usage"]["completion_tokens"] > 0 for r in results.values())
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
        log.close()
    # embedded state lives in the working directory: the files and the batch beside the ledger
    assert (tmp_path / "sluicegate-files" / "files").is_dir() and (tmp_path / "sluicegate-files" / "batches").is_dir()
