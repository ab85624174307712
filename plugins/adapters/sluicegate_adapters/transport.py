"""What every SCM client shares: one session, auth, JSON, status mapping, retries.

A ``Dialect`` says what differs between providers: the auth header, how a
rate-limit answer looks, where the error message sits in an error body. The
``Transport`` does the rest once: a single attempt per ``call`` mapped to
``sluicegate_adapters.errors``, and ``retrying``, which runs a whole operation
again after a rate limit, a 5xx or a dropped connection. Retrying the operation
rather than the request is what makes retried writes safe: every operation reads
before it writes, so a create whose answer was lost is found, not repeated.

The token lives only in the session's default headers; every text a provider
sends back is scrubbed of it before it reaches a message or a log line.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ParamSpec, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import msgspec

from sluicegate_adapters.errors import (
    BadRequest,
    Conflict,
    NotFound,
    RateLimited,
    ScmError,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from sluicegate_adapters.retry import Clock, RetryPolicy, parse_retry_after

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("sluicegate_adapters")

USER_AGENT = "sluicegate-adapters/0.1.0"
# a provider's own message is kept short in ours: enough to say what is wrong
_MESSAGE_LIMIT = 300
# a listing longer than this many pages is a loop or a mistake, not a repository
_MAX_PAGES = 50
_MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 307, 308})
_STATUS_ERRORS: dict[int, type[ScmError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: NotFound,
    422: Unprocessable,
}


@dataclass(frozen=True, slots=True)
class Throttle:
    """A rate-limit answer; ``wait`` is what the provider asked for, None when it did not say."""

    wait: float | None


class Dialect(ABC):
    """What one provider's REST API does its own way."""

    name: str

    @abstractmethod
    def auth_headers(self, token: str) -> dict[str, str]: ...

    @abstractmethod
    def throttle(self, status: int, headers: Mapping[str, str], message: str, now: float) -> Throttle | None:
        """A rate-limit answer --> how long to wait; None when the answer is not a rate limit."""

    @abstractmethod
    def error_message(self, body: bytes) -> str:
        """The human-readable message in an error body ("" when there is none)."""

    def refused(self, status: int, headers: Mapping[str, str]) -> bool:
        """A success status that still means the credentials were refused."""
        return False


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    next_url: str | None
    location: str | None = None


class Transport:
    """One aiohttp session against one provider's API root, with its token."""

    def __init__(
        self,
        dialect: Dialect,
        base_url: str,
        token: str,
        *,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if not token:
            raise ValueError(f"{dialect.name}: a token is required")
        self.dialect = dialect
        self.base_url = base_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self.clock = clock or Clock()
        self._origin = urlsplit(self.base_url)[:2]
        auth = dialect.auth_headers(token)
        self._secrets = tuple(sorted({token, *auth.values()}, key=len, reverse=True))
        self._headers = {**auth, "User-Agent": USER_AGENT}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(10.0, timeout_s))
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Transport({self.dialect.name}, {self.base_url!r})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def call(self, method: str, path: str, into: type[T], *, params: Mapping[str, str] | None = None, body: object = None) -> T:
        reply = await self._exchange(method, self.base_url + path, params, body)
        return self._decode(method, path, reply.body, into)

    async def send(self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: object = None) -> None:
        await self._exchange(method, self.base_url + path, params, body)

    async def pages(self, path: str, into: type[list[T]], *, params: Mapping[str, str] | None = None) -> list[T]:
        """Every item of a listing, following ``Link: <...>; rel="next"`` (GitHub, GitLab)."""
        items: list[T] = []
        url: str | None = self.base_url + path
        for _ in range(_MAX_PAGES):
            if url is None:
                return items
            reply = await self._exchange("GET", url, params, None)
            items.extend(self._decode("GET", path, reply.body, into))
            url, params = reply.next_url, None
        raise ScmError(f"{self.dialect.name}: GET {path} has more than {_MAX_PAGES} pages", provider=self.dialect.name)

    async def retrying(self, what: str, op: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``op`` until it succeeds, a non-retryable error ends it, or the policy runs out."""
        policy = self.policy
        attempt = 0
        while True:
            attempt += 1
            try:
                return await op(*args, **kwargs)
            except (RateLimited, Unavailable) as exc:
                wait = exc.retry_after
                if wait is not None and wait > policy.max_wait_s:
                    raise type(exc)(
                        f"{exc.message}; it asks for a {wait:.0f}s wait, longer than the {policy.max_wait_s:.0f}s allowed",
                        provider=exc.provider, scm_status=exc.scm_status, retry_after=wait,
                    ) from None  # fmt: skip
                if attempt >= policy.max_attempts:
                    raise
                if wait is None:
                    wait = policy.backoff(attempt, self.clock.random)
                log.warning(
                    "%s: %s failed (%s); attempt %d of %d, retrying in %.2fs",
                    self.dialect.name, what, exc.message, attempt, policy.max_attempts, wait,
                )  # fmt: skip
                await self.clock.sleep(wait)

    def _session_for_call(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _exchange(self, method: str, url: str, params: Mapping[str, str] | None, body: object) -> Reply:
        data = None if body is None else msgspec.json.encode(body)
        for _ in range(_MAX_REDIRECTS + 1):
            where = f"{self.dialect.name}: {method} {self.scrub(urlsplit(url).path)}"
            if urlsplit(url)[:2] != self._origin:
                # a Link or Location pointing elsewhere must not get the token
                raise ScmError(f"{where}: refusing to follow a link off {self.base_url}", provider=self.dialect.name)
            reply = await self._once(where, method, url, params, data)
            if reply.status not in _REDIRECTS or not reply.location:
                break
            # a renamed or transferred repository (GitHub answers 301 or 307): same method, same body
            url, params = reply.location, None
        else:
            raise ScmError(f"{where}: more than {_MAX_REDIRECTS} redirects", provider=self.dialect.name)
        if 200 <= reply.status < 300 and not self.dialect.refused(reply.status, reply.headers):
            return reply
        raise self._status_error(where, reply)

    async def _once(self, where: str, method: str, url: str, params: Mapping[str, str] | None, data: bytes | None) -> Reply:
        headers = {"Content-Type": "application/json"} if data is not None else None
        session = self._session_for_call()
        try:
            async with session.request(method, url, params=params, data=data, headers=headers, allow_redirects=False) as resp:
                raw = await resp.read()
                link = resp.links.get("next")
                next_url = None if link is None else str(link.get("url", "")) or None
                location = resp.headers.get("Location")
                if location is not None:
                    location = urljoin(str(resp.url), location)
                return Reply(resp.status, resp.headers, raw, next_url, location)
        except aiohttp.InvalidURL:
            raise ScmError(f"{where}: not a valid URL", provider=self.dialect.name) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable(f"{where} failed: {type(exc).__name__}", provider=self.dialect.name) from None

    def _status_error(self, where: str, reply: Reply) -> ScmError:
        name = self.dialect.name
        said = self.scrub(self.dialect.error_message(reply.body))[:_MESSAGE_LIMIT]
        message = f"{where} answered {reply.status}" + (f": {said}" if said else "")
        throttle = self.dialect.throttle(reply.status, reply.headers, said, self.clock.now())
        if throttle is not None:
            return RateLimited(message, provider=name, scm_status=reply.status, retry_after=throttle.wait)
        if reply.status < 300:
            return Unauthorized(f"{where}: the credentials were refused", provider=name, scm_status=reply.status)
        if reply.status == 408 or reply.status >= 500:
            wait = parse_retry_after(reply.headers.get("Retry-After"), self.clock.now())
            return Unavailable(message, provider=name, scm_status=reply.status, retry_after=wait)
        return _STATUS_ERRORS.get(reply.status, ScmError)(message, provider=name, scm_status=reply.status)

    def _decode(self, method: str, path: str, raw: bytes, into: type[T]) -> T:
        try:
            return msgspec.json.decode(raw, type=into)
        except msgspec.DecodeError as exc:
            where = f"{self.dialect.name}: {method} {self.scrub(path)}"
            raise ScmError(f"{where} answered an unexpected body: {self.scrub(str(exc))}", provider=self.dialect.name) from None
