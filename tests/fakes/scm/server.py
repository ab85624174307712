"""What the three fake SCM servers share: start on a free port, auth, rate limits, faults, recording.

Every request passes one middleware, in this order:

1. it is recorded in ``requests`` (method, path, query, the status it got);
2. ``fail_next(k, status)``: the next ``k`` requests answer that status (a proxy's
   HTML page), before anything else looks at them;
3. the token is checked (each provider's own header); a wrong one gets the
   provider's 401;
4. ``throttle(...)``: after ``after`` more requests, the next ``times`` answer the
   provider's rate-limit response with its headers (``times=None``: every one
   until the fake's clock, ``now``, reaches ``reset_at``);
5. the route runs. A write that succeeds is appended to ``writes`` as
   ``Write(kind, ...)``, ``kind`` naming what it did ("comment.create",
   "comment.update", "status.create", "branch.create", "branch.delete",
   "commit.create", "pull.create", "pull.update").

Routes signal an error by raising ``ApiError(status, message)``; each provider
renders it in its own error shape.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from tests.fakes.scm.model import Repo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str | list[str], **extra: Any) -> None:
        super().__init__(str(message))
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    # when it arrived (the fake's clock)
    at: float = 0.0


@dataclass
class Write:
    kind: str
    method: str
    path: str
    body: Any


@dataclass
class Throttling:
    # requests still answered normally before the limit hits
    after: int = 0
    # requests answered with the rate limit, then it lifts; None: every request until the fake's clock reaches reset_at
    times: int | None = 1
    # the Retry-After value sent (seconds or an HTTP date); None: the header is left out
    retry_after: str | None = "7"
    # epoch seconds for the reset headers; None: now + 60
    reset_at: float | None = None
    # GitHub only: a secondary rate limit (403 with retry-after, no x-ratelimit-remaining: 0)
    secondary: bool = False
    # GitHub only: the status of a primary limit (GitHub sends 403 or 429)
    status: int = 403


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: str | None = None


class FakeScm(ABC):
    provider: str
    # where the API root sits under the server's origin
    api_root: str = ""

    def __init__(self, token: str | None = None, now: Callable[[], float] = time.time) -> None:
        self.token = token or f"tok-{self.provider}-{secrets.token_hex(8)}"
        self.now = now
        self.repos: dict[str, Repo] = {}
        self.requests: list[Seen] = []
        self.writes: list[Write] = []
        self.throttling: Throttling | None = None
        self._fault: _Fault | None = None
        # path fragment --> the status every request whose path holds it gets, until cleared
        self.path_faults: dict[str, int] = {}
        self._ids = iter(range(1000, 10**9))
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> str:
        """Serve on a free loopback port; the API's base URL, as a client is configured with it."""
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}{self.api_root}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- test controls ----------------------------------------------------------

    def add_repo(self, name: str, default_branch: str = "main", files: dict[str, bytes] | None = None) -> Repo:
        repo = Repo(name=name, id=self.next_id(), default_branch=default_branch)
        repo.commit(default_branch, files or {"README.md": b"# fake\n"}, "initial commit")
        self.repos[name] = repo
        return repo

    def throttle(self, **how: Any) -> Throttling:
        self.throttling = Throttling(**how)
        return self.throttling

    def fail_path(self, fragment: str, status: int = 502) -> None:
        """Every request whose path holds ``fragment`` answers ``status`` until ``path_faults`` is cleared."""
        self.path_faults[fragment] = status

    def fail_next(self, k: int, status: int = 502, retry_after: str | None = None) -> None:
        """The next ``k`` requests answer ``status`` with a proxy's HTML page (and ``Retry-After`` if given)."""
        self._fault = _Fault(remaining=k, status=status, retry_after=retry_after)

    def writes_of(self, kind: str) -> list[Write]:
        return [w for w in self.writes if w.kind == kind]

    def next_id(self) -> int:
        return next(self._ids)

    def reset_at(self) -> float:
        t = self.throttling
        return t.reset_at if t is not None and t.reset_at is not None else self.now() + 60

    # --- for the provider modules -----------------------------------------------

    def record(self, kind: str, request: web.Request, body: Any) -> None:
        self.writes.append(Write(kind=kind, method=request.method, path=request.path, body=body))

    def repo(self, name: str) -> Repo:
        found = self.repos.get(name)
        if found is None:
            raise self.repo_missing(name)
        return found

    @staticmethod
    async def body(request: web.Request) -> Any:
        try:
            return msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            raise ApiError(400, "Problems parsing JSON") from None

    @abstractmethod
    def routes(self, app: web.Application) -> None: ...

    @abstractmethod
    def authorized(self, request: web.Request) -> bool: ...

    @abstractmethod
    def unauthorized(self) -> web.Response: ...

    @abstractmethod
    def rate_limited(self, throttling: Throttling) -> web.Response: ...

    @abstractmethod
    def error(self, exc: ApiError) -> web.Response: ...

    @abstractmethod
    def repo_missing(self, name: str) -> ApiError: ...

    def decorate(self, response: web.StreamResponse) -> None:
        """Headers every answer carries (GitHub's rate-limit counters)."""

    # --- the middleware -----------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        seen = Seen(method=request.method, path=request.path, query=dict(request.query), at=self.now())
        self.requests.append(seen)
        response = await self._answer(request, handler)
        seen.status = response.status
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        for fragment, status in self.path_faults.items():
            if fragment in request.path:
                return web.Response(status=status, text=f"<html><body><h1>{status}</h1></body></html>", content_type="text/html")
        fault = self._fault
        if fault is not None and fault.remaining > 0:
            fault.remaining -= 1
            page = f"<html><body><h1>{fault.status} Server Error</h1></body></html>"
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return web.Response(status=fault.status, text=page, content_type="text/html", headers=headers)
        if not self.authorized(request):
            return self.unauthorized()
        t = self.throttling
        if t is not None:
            if t.after > 0:
                t.after -= 1
            elif t.times is None and self.now() < self.reset_at():
                return self.rate_limited(t)
            elif t.times is not None and t.times > 0:
                t.times -= 1
                return self.rate_limited(t)
        try:
            response = await handler(request)
        except ApiError as exc:
            response = self.error(exc)
        self.decorate(response)
        return response


def paginate(request: web.Request, items: list[Any], default_per_page: int = 30) -> tuple[list[Any], str | None, int, int]:
    """One page of ``items`` per ``page``/``per_page``; (items, Link header or None, page, next page or 0)."""
    per_page = min(int(request.query.get("per_page", default_per_page)), 100)
    page = max(int(request.query.get("page", 1)), 1)
    chunk = items[(page - 1) * per_page : page * per_page]
    more = page * per_page < len(items)
    if not more:
        return chunk, None, page, 0
    url = request.url.update_query(page=str(page + 1), per_page=str(per_page))
    return chunk, f'<{url}>; rel="next"', page, page + 1
