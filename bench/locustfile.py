"""Load test for a running gateway with locust.

    locust -f bench/locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:8300

Environment: SLUICEGATE_KEY (API key, default the embedded development key),
SLUICEGATE_MODEL (alias, default smollm2), SLUICEGATE_MAX_TOKENS (default 16).
Users mix non-streamed and streamed chat completions and a models listing;
streamed requests are counted complete only once `data: [DONE]` arrives, and
time to first byte is reported as its own entry.
"""

from __future__ import annotations

import os
import time

from locust import HttpUser, between, task

KEY = os.environ.get("SLUICEGATE_KEY", "sk-sluicegate-local")
MODEL = os.environ.get("SLUICEGATE_MODEL", "smollm2")
MAX_TOKENS = int(os.environ.get("SLUICEGATE_MAX_TOKENS", "16"))
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


class GatewayUser(HttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    @task(6)
    def chat(self) -> None:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        with self.client.post("/v1/chat/completions", json=body, headers=self.headers, catch_response=True) as resp:
            if resp.status_code != 200 or "choices" not in (resp.text or ""):
                resp.failure(f"status {resp.status_code}")

    @task(3)
    def chat_stream(self) -> None:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True}
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions", json=body, headers=self.headers, stream=True, catch_response=True,
            name="/v1/chat/completions (stream)",
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            first = None
            done = False
            for line in resp.iter_lines():
                if first is None:
                    first = time.perf_counter()
                    self.environment.events.request.fire(
                        request_type="TTFB", name="stream first byte", response_time=(first - started) * 1000,
                        response_length=0, exception=None, context={},
                    )
                if line.strip() == b"data: [DONE]":
                    done = True
            if not done:
                resp.failure("stream ended without [DONE]")

    @task(1)
    def models(self) -> None:
        self.client.get("/v1/models", headers=self.headers)
