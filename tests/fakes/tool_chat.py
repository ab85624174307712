"""A fake chat upstream that calls tools: for the Responses API's ``mcp`` tools through the gateway.

``POST /v1/chat/completions`` (non-streamed only), ``GET /v1/models``. With
tools offered and no tool result yet it calls one: the tool the last user
message names as ``call:NAME {json arguments}``, else the tool named
``echo`` (or ending in ``__echo``) with the user's text, else the first one.
After a tool result it answers ``The tool said: <result>``; without tools,
``No tools.``. Every answer carries usage (one token a word).

    python -m tests.fakes.tool_chat --port 9002
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

JsonObject = dict[str, Any]


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _call(tools: list[JsonObject], user: str) -> JsonObject:
    names = [str(t.get("function", {}).get("name", "")) for t in tools]
    if user.startswith("call:"):
        name, _, arguments = user[len("call:") :].partition(" ")
        return {"name": name, "arguments": arguments.strip() or "{}"}
    echo = next((n for n in names if n == "echo" or n.endswith("__echo")), None)
    if echo is not None:
        return {"name": echo, "arguments": json.dumps({"text": user})}
    return {"name": names[0], "arguments": "{}"}


def answer(body: JsonObject) -> JsonObject:
    """The completion for one chat request."""
    messages: list[JsonObject] = body.get("messages") or []
    tools: list[JsonObject] = body.get("tools") or []
    last = messages[-1] if messages else {}
    user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    message: JsonObject
    if last.get("role") == "tool":
        message = {"role": "assistant", "content": f"The tool said: {_text(last.get('content'))}"}
        finish = "stop"
    elif tools and body.get("tool_choice") != "none":
        call = {"id": f"call_{time.monotonic_ns()}", "type": "function", "function": _call(tools, user)}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": "No tools."}
        finish = "stop"
    prompt = sum(len(_text(m.get("content")).split()) for m in messages) or 1
    completion = len(_text(message.get("content")).split()) or 1
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "tool-model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


async def _chat(request: Request) -> Response:
    return JSONResponse(answer(await request.json()))


async def _models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "tool-model", "object": "model"}]})


app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"]), Route("/v1/models", _models)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
