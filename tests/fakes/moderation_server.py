"""A fake ``/v1/moderations`` endpoint (aiohttp), as OpenAI's or a self-hosted classifier's.

An input is scored by words it holds: ``kill`` --> ``violence`` 0.9, ``hate``
--> ``hate`` 0.8, ``meh`` --> ``harassment`` 0.4 (under the usual threshold,
not flagged); anything else scores 0.01 everywhere. The model name picks a
behaviour: ``error_500`` answers 500, ``slow`` waits ``slow_s`` before
answering, ``short`` answers one result fewer than asked. Requests are kept
(``server.requests``) so a test can see what was sent and with which key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CATEGORIES = ("hate", "harassment", "self-harm", "sexual", "violence")
_WORDS = {"kill": ("violence", 0.9), "hate": ("hate", 0.8), "meh": ("harassment", 0.4)}


@dataclass
class ModerationServer:
    base_url: str  # ends in /v1, as a deployment's base_url does
    requests: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)
    slow_s: float = 5.0


def score(text: str) -> dict[str, Any]:
    scores = dict.fromkeys(CATEGORIES, 0.01)
    for word, (category, value) in _WORDS.items():
        if word in text.lower():
            scores[category] = max(scores[category], value)
    flags = {c: s >= 0.5 for c, s in scores.items()}
    return {"flagged": any(flags.values()), "categories": flags, "category_scores": scores}


@asynccontextmanager
async def moderation_server() -> AsyncIterator[ModerationServer]:
    server = ModerationServer(base_url="")

    async def moderate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        server.requests.append((body, request.headers.get("authorization")))
        model = body.get("model")
        if model == "error_500":
            return web.json_response({"error": {"message": "boom", "type": "server_error", "code": None}}, status=500)
        if model == "slow":
            await asyncio.sleep(server.slow_s)
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        results = [score(t) for t in texts]
        if model == "short":
            results = results[:-1]
        return web.json_response({"id": "modr-fake", "model": model or "fake-moderation", "results": results})

    app = web.Application()
    app.router.add_post("/v1/moderations", moderate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()
