"""Moderation: a classifier behind OpenAI's ``/v1/moderations`` wire format.

``Moderator`` is the interface: texts in, one ``ModerationResult`` per text
out. ``HttpModerator`` speaks ``POST {base_url}/moderations`` to any deployment
that serves it: OpenAI's own endpoint, or a self-hosted classifier (a Llama
Guard or a fine-tuned BERT behind a small server that answers in the same
shape). The caller resolves the deployment's base URL (``.../v1``) and key and
owns the pooled session. ``ModerationGuard`` turns results into a verdict: a
text is flagged when one of the configured categories scores at least the
threshold (any category when none is configured), or, without a threshold, when
the endpoint marks it flagged (or marks a configured category true). The same
results answer the gateway's ``/v1/moderations`` route (``moderation_body``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
import msgspec

from core.config_guardrails import Moderation
from core.errors import UpstreamError
from policies.guardrails_types import Text, Verdict, allowed
from serving.http_transport import ErrorFields, status_error, transport_error

# What moderation reads: what people and models wrote, not tool names or schema prose.
_MODERATED = frozenset({"prompt", "tool_result", "retrieved", "tool_call", "output"})


class ModerationResult(msgspec.Struct, frozen=True):
    flagged: bool
    categories: dict[str, bool] = msgspec.field(default_factory=dict)
    category_scores: dict[str, float] = msgspec.field(default_factory=dict)


class _Reply(msgspec.Struct):
    results: list[ModerationResult]


class _ErrorBody(msgspec.Struct):
    message: str = ""
    code: str | None = None
    param: str | None = None


class _ErrorReply(msgspec.Struct):
    error: _ErrorBody


class Moderator(Protocol):
    """A moderation classifier: one result per text, in order."""

    async def classify(self, texts: Sequence[str]) -> list[ModerationResult]: ...


class HttpModerator:
    """``POST {base_url}/moderations`` with ``{"input": [...], "model": ...}``; OpenAI's reply shape."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, *, name: str, api_key: str | None = None, model: str | None = None
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/moderations"
        self._name = name
        self._model = model
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    async def classify(self, texts: Sequence[str]) -> list[ModerationResult]:
        if not texts:
            return []
        request: dict[str, Any] = {"input": list(texts)}
        if self._model is not None:
            request["model"] = self._model
        try:
            async with self._session.post(self._url, data=msgspec.json.encode(request), headers=self._headers) as response:
                raw = await response.read()
                status = response.status
                retry_after = response.headers.get("retry-after")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, self._name) from None
        if status != 200:
            raise status_error(self._name, status, _error_fields(raw), retry_after)
        try:
            results = msgspec.json.decode(raw, type=_Reply).results
        except msgspec.DecodeError:
            raise UpstreamError(f"deployment {self._name} answered moderation with a body that is not a moderation result") from None
        if len(results) != len(texts):
            raise UpstreamError(f"deployment {self._name} answered {len(results)} moderation results for {len(texts)} inputs")
        return results


def _error_fields(raw: bytes) -> ErrorFields:
    try:
        error = msgspec.json.decode(raw, type=_ErrorReply).error
    except msgspec.DecodeError:
        return ErrorFields()
    return ErrorFields(message=error.message, code=error.code, param=error.param)


def moderation_body(results: Sequence[ModerationResult], *, model: str, request_id: str) -> dict[str, Any]:
    """The ``/v1/moderations`` answer for ``results``."""
    return {"id": f"modr-{request_id}", "model": model, "results": [msgspec.to_builtins(r) for r in results]}


class ModerationGuard:
    def __init__(self, config: Moderation, moderator: Moderator) -> None:
        self._name = config.name
        self._moderator = moderator
        self._categories = tuple(config.categories)
        self._threshold = config.threshold

    @property
    def name(self) -> str:
        return self._name

    async def check(self, texts: Sequence[Text]) -> Verdict:
        moderated = [t.text for t in texts if t.source in _MODERATED and t.text.strip()]
        for result in await self._moderator.classify(moderated):
            category = self._flagged(result)
            if category is not None:
                return Verdict("blocked", self._name, f"moderation.{category}")
        return allowed(self._name)

    def _flagged(self, result: ModerationResult) -> str | None:
        if self._threshold is not None:
            watched = self._categories or tuple(result.category_scores)
            over = [c for c in watched if result.category_scores.get(c, 0.0) >= self._threshold]
            return max(over, key=lambda c: result.category_scores[c]) if over else None
        if self._categories:
            return next((c for c in self._categories if result.categories.get(c)), None)
        if result.flagged:
            return next((c for c, on in result.categories.items() if on), "flagged")
        return None
