"""The floor for a Python hop: the least a Litestar gateway can do per request.

It forwards the body of ``POST /v1/chat/completions`` unchanged to the upstream
over one pooled keep-alive aiohttp session and relays the answer: the whole
body, or chunk by chunk when the upstream streams. No auth, no validation, no
parsing. The overhead benchmark compares the real gateway against this.

Run: ``python -m bench.passthrough --upstream http://127.0.0.1:9100 --port 9200``
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from litestar import Litestar, Request, post
from litestar.datastructures import State
from litestar.response import Response, Stream

_UPSTREAM_PATH = "/v1/chat/completions"
_JSON_HEADERS = {"Content-Type": "application/json"}


async def _relay(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    # the upstream response is released only once the stream has been relayed
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    finally:
        response.release()


@post(_UPSTREAM_PATH, status_code=200)
async def chat_completions(request: Request[object, object, State], state: State) -> Response[bytes] | Stream:
    session: aiohttp.ClientSession = state.session
    body = await request.body()
    upstream = await session.post(state.target, data=body, headers=_JSON_HEADERS)
    media_type = upstream.headers.get("Content-Type", "application/json")
    if media_type.startswith("text/event-stream"):
        return Stream(_relay(upstream), media_type=media_type, status_code=upstream.status)
    try:
        payload = await upstream.read()
    finally:
        upstream.release()
    return Response(payload, media_type=media_type, status_code=upstream.status)


def create_app(upstream: str) -> Litestar:
    """``upstream`` is the server root, with or without a trailing ``/v1``."""
    root = upstream.rstrip("/").removesuffix("/v1")

    async def open_session(app: Litestar) -> None:
        connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60)
        app.state.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))
        app.state.target = root + _UPSTREAM_PATH

    async def close_session(app: Litestar) -> None:
        await app.state.session.close()

    return Litestar(
        route_handlers=[chat_completions],
        on_startup=[open_session],
        on_shutdown=[close_session],
        openapi_config=None,
        logging_config=None,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default="http://127.0.0.1:9100")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
