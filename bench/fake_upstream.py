"""A fast fake OpenAI-compatible upstream for tests and benchmarks.

Run it with ``python -m bench.fake_upstream --host 127.0.0.1 --port 9100`` or
start it in-process with :func:`start_fake_upstream`.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both stream
and non-stream), ``POST /v1/embeddings``, ``POST /v1/responses`` (the Responses
API, stream and not, also at Azure's ``/openai/v1/responses``: see
``bench.fake_responses``), ``GET /v1/models``, and
``GET``/``DELETE /_fake/requests`` to read or clear the recorded requests (the
last 1000: method, path, query parameters, lower-cased headers, parsed JSON
body). Azure OpenAI's paths, ``POST /openai/deployments/{deployment}/`` +
``chat/completions``, ``completions`` or ``embeddings`` (with ``?api-version=``),
and ``GET /openai/models``, answer exactly as their ``/v1`` twins: Azure's wire
format is OpenAI's. The Files and Batches APIs (``/v1/files``, ``/v1/batches``,
and Azure's ``/openai/files``, ``/openai/batches``) take the batches a gateway
passes through, and complete them after a short delay: see ``bench.fake_batches``.

Behaviour is picked by the header ``x-fake-behavior``, else by the model name
(``fake-<behavior>`` or the bare name), else by a prompt (last user message or
completion prompt) that starts with ``fake-behavior:<behavior>``, which is how a
client's own request picks one; anything else is ``normal``:

- ``normal``: ``x-fake-chunks`` words (default 20), one per stream chunk.
- ``slow``: waits ``x-fake-delay-ms`` (default 2000) before answering.
- ``error_400``, ``error_401``, ``error_429`` (with ``Retry-After: 1``),
  ``error_500``, ``error_503``: that status with an OpenAI error body;
  ``error_429_date``: a 429 whose ``Retry-After`` is an HTTP date 30 s ahead.
- ``error_midstream``: a few chunks, then ``data: {"error": ...}`` and the end;
  non-stream answers like ``error_500``.
- ``disconnect_midstream``: a few chunks, then the connection is dropped
  without the terminating chunk; non-stream drops it before any response.
- ``huge``: about 5 MB of content, or 2000 stream chunks.
- ``no_usage``: no usage in the body, no usage chunk even when asked.
- ``ignore_max_tokens``: answers as ``normal`` but never stops at ``max_tokens``.
- ``echo``: answers with the last user text (or the prompt), streamed in 4-character pieces.

A running server's behaviour can be overridden (the fake behind one
deployment starts failing while another's stays healthy):
``POST /_fake/behavior`` with ``{"behavior": "error_500", "delay_ms": 500}``
(either key may be null or left out; an unknown behaviour is a 400) makes
``behavior`` what every later request gets unless its ``x-fake-behavior``
header picks one (the header still wins; the model name and the prompt do
not), and ``delay_ms`` the wait of ``slow`` when the request sends no
``x-fake-delay-ms``. ``GET`` shows the override, ``DELETE`` (or
``{"behavior": null}``) clears it; in-process,
:meth:`FakeUpstream.set_behavior` does the same. Unset, nothing changes.

In any stream, ``x-fake-chunk-delay-ms`` sleeps between writes and
``x-fake-chunks-per-write`` (default 1, or ``--chunks-per-write``) groups
events into one socket write. Tools are
echoed: with ``tools`` and ``tool_choice`` not ``"none"`` the answer is a call
to the first (or the forced) tool with ``finish_reason`` ``"tool_calls"``, its
arguments valid for the tool's parameters schema; once the last message is a
tool result the answer is text again. ``response_format`` ``json_schema``
answers JSON that the schema accepts, ``json_object`` a JSON object
(``bench.fake_replies`` and ``bench.fake_json``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections import deque
from dataclasses import dataclass

import uvloop
from aiohttp import web

from bench import fake_replies as replies
from bench.fake_batches import FakeBatches, add_routes
from bench.fake_handlers import MAX_BODY_BYTES, Handlers
from bench.fake_replies import JsonObject


def build_app(handlers: Handlers) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/chat/completions", handlers.chat)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/embeddings", handlers.embeddings)
    app.router.add_post("/v1/responses", handlers.responses)
    app.router.add_post("/openai/v1/responses", handlers.responses)
    azure = "/openai/deployments/{deployment}"
    app.router.add_post(f"{azure}/chat/completions", handlers.chat)
    app.router.add_post(f"{azure}/completions", handlers.completions)
    app.router.add_post(f"{azure}/embeddings", handlers.embeddings)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/openai/models", handlers.models)
    # The Files and Batches APIs (bench.fake_batches), recorded with the rest, failing under the same override.
    add_routes(app, FakeBatches(handlers.record, lambda: handlers.override.behavior))
    app.router.add_get("/_fake/requests", handlers.recorded)
    app.router.add_delete("/_fake/requests", handlers.clear)
    app.router.add_get("/_fake/behavior", handlers.get_override)
    app.router.add_post("/_fake/behavior", handlers.post_override)
    app.router.add_delete("/_fake/behavior", handlers.delete_override)
    return app


@dataclass
class FakeUpstream:
    """A running fake; ``requests`` holds the most recent recorded requests."""

    host: str
    port: int
    requests: deque[JsonObject]
    _runner: web.AppRunner
    _handlers: Handlers

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def set_behavior(self, behavior: str | None, delay_ms: int | None = None) -> None:
        """What ``POST /_fake/behavior`` does; ValueError for an unknown behavior, ``None`` clears."""
        self._handlers.set_behavior(behavior, delay_ms)

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_fake_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    default_chunks: int = replies.DEFAULT_CHUNKS,
    chunks_per_write: int = 1,
) -> FakeUpstream:
    """Serve on ``host:port`` (0 picks a free port) until ``close()``."""
    handlers = Handlers(default_chunks, max(chunks_per_write, 1))
    runner = web.AppRunner(build_app(handlers), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048).start()
    bound_port = int(runner.addresses[0][1])
    return FakeUpstream(host, bound_port, handlers.requests, runner, handlers)


async def _serve(host: str, port: int, chunks: int, per_write: int) -> None:
    fake = await start_fake_upstream(host, port, chunks, per_write)
    print(f"fake upstream listening on {fake.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=replies.DEFAULT_CHUNKS, help="default words per reply")
    parser.add_argument(
        "--chunks-per-write",
        type=int,
        default=1,
        help="stream events per socket write (1, like a model server emitting tokens)",
    )
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.host, args.port, args.chunks, args.chunks_per_write))


if __name__ == "__main__":
    main()
