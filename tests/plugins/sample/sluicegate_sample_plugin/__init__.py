"""A plugin as a third party would write one: hooks that record, refuse, answer, fail; a route, a worker, an engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import msgspec

from core.plugin import HookRequest, Plugin, Refusal, Reply
from serving.base import Completion, EngineRequest, EngineSpec, Load, StreamChunk, Usage


class RecorderOptions(msgspec.Struct, forbid_unknown_fields=True):
    tag: str
    events_path: str


class Recorder(Plugin):
    """Appends one JSON line per hook call to ``events_path``: which plugin, which hook, which request."""

    name = "recorder"
    Options = RecorderOptions

    def _log(self, hook: str, request_id: str, **extra: Any) -> None:
        line = {"tag": self.options.tag, "hook": hook, "request_id": request_id, **extra}
        with open(self.options.events_path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    async def after_auth(self, request: HookRequest) -> Reply | None:
        state = request.plugin_state if request.plugin_state is not None else {}
        state.setdefault("seen", []).append(self.options.tag)
        request.plugin_state = state
        self._log("after_auth", request.request_id, tenant=request.principal.tenant, alias=request.alias)
        return None

    async def before_route(self, request: HookRequest) -> Reply | None:
        self._log("before_route", request.request_id)
        return None

    async def before_serve(self, request: HookRequest) -> Reply | None:
        self._log("before_serve", request.request_id)
        return None

    def on_chunk(self, request: HookRequest, data: bytes) -> bytes | None:
        self._log("on_chunk", request.request_id)
        return None

    async def after_settle(self, request: HookRequest) -> None:
        seen = (request.plugin_state or {}).get("seen", [])
        self._log("after_settle", request.request_id, status=request.status, deployment=request.deployment, seen=seen)

    def on_ledger_row(self, row: dict[str, Any]) -> None:
        self._log("on_ledger_row", row["request_id"], cost=row.get("cost_pico"))


class Guard(Plugin):
    """Refuses prompts that say "forbidden", answers those that say "canned", shouts on the way back."""

    name = "guard"

    @staticmethod
    def _prompt(request: HookRequest) -> str:
        messages = request.body.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content") if isinstance(last, dict) else None
        return content if isinstance(content, str) else ""

    async def before_route(self, request: HookRequest) -> Reply | None:
        prompt = self._prompt(request)
        if "forbidden" in prompt:
            raise Refusal("The guard refused this prompt.", status=403, code="guard_refused", type="permission_error")
        if "canned" in prompt:
            message = {"role": "assistant", "content": "A canned answer."}
            usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return Reply({"object": "chat.completion", "choices": [choice], "usage": usage})
        if "rewrite" in prompt:
            request.body = {**request.body, "messages": [{"role": "user", "content": "rewritten by the guard"}]}
        return None

    def on_chunk(self, request: HookRequest, data: bytes) -> bytes | None:
        if "shout" not in self._prompt(request):
            return None
        return data.replace(b"Hello", b"HELLO")


class RaiserOptions(msgspec.Struct, forbid_unknown_fields=True):
    mode: Literal["raise", "sleep"] = "raise"


class Raiser(Plugin):
    name = "raiser"
    Options = RaiserOptions

    async def after_auth(self, request: HookRequest) -> Reply | None:
        if self.options.mode == "sleep":
            await asyncio.sleep(30)
        raise RuntimeError("the raiser plugin always fails")


class RoutesOptions(msgspec.Struct, forbid_unknown_fields=True):
    heartbeat_path: str = ""


class EchoEngine:
    """Answers with the last user message: an engine a plugin offers."""

    def __init__(self, spec: EngineSpec) -> None:
        self.name = spec.name
        self.provider = "plugin"
        self.model = spec.model

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @staticmethod
    def _text(request: EngineRequest) -> str:
        messages = request.body.get("messages") or [{}]
        content = messages[-1].get("content")
        return f"echo: {content}" if isinstance(content, str) else "echo"

    async def generate(self, request: EngineRequest) -> Completion:
        text = self._text(request)
        usage = Usage(prompt_tokens=2, completion_tokens=len(text.split()), total_tokens=2 + len(text.split()))
        body = {
            "id": f"chatcmpl-{request.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
        return Completion(body=json.dumps(body).encode(), usage=usage)

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        text = self._text(request)
        head = {"id": f"chatcmpl-{request.request_id}", "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model}
        delta = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]}
        yield StreamChunk(data=json.dumps(delta).encode(), text=text)
        done = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield StreamChunk(data=json.dumps(done).encode(), finish_reason="stop")

    async def embed(self, request: EngineRequest) -> Completion:
        raise NotImplementedError

    async def abort(self, request_id: str) -> None:
        return None

    async def health(self) -> bool:
        return True

    def load(self) -> Load:
        return Load()


class Routes(Plugin):
    """``GET /sample/whoami`` (the gateway's own authentication), a heartbeat worker, and the ``echo`` engine."""

    name = "routes"
    Options = RoutesOptions
    http_prefix = "/sample"
    engine_names = ("echo",)

    async def worker(self) -> None:
        if not self.options.heartbeat_path:
            return
        beats = 0
        while True:
            beats += 1
            Path(self.options.heartbeat_path).write_text(f"{self.services.role} {beats}")
            await asyncio.sleep(0.2)

    def engines(self) -> dict[str, Any]:
        return {"echo": EchoEngine}

    def asgi(self) -> Any:
        services = self.services

        async def app(scope: Any, receive: Any, send: Any) -> None:
            headers = {k.decode(): v.decode() for k, v in scope.get("headers", [])}
            if scope["path"] != "/sample/whoami":
                status, body = 404, {"error": "no such sample route"}
            else:
                try:
                    principal = await services.authenticate(headers.get("authorization"))
                    status, body = 200, {"tenant": principal.tenant}
                except Exception:
                    status, body = 401, {"error": "unauthenticated"}
            payload = json.dumps(body).encode()
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": payload})

        return app


class FromTheFuture(Plugin):
    """Built for an interface this gateway does not speak."""

    name = "old"
    api_version: ClassVar[int] = 99
