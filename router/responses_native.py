"""Responses requests for an alias with a deployment whose upstream has the Responses API.

Such a request goes through the pipeline as its Responses body (kind
``responses``, ``router.responses_surface.responses_body``): the PII step, token
estimates and budgets read that body, so what is scanned and redacted is what
goes out. Each attempt then takes the form its deployment reads
(``ResponsesContext.engine_request``): one with the Responses API
(``serving.base.serves_responses``) gets the body with its own model name and
``store: false`` (the gateway stays the store of record: the conversation of a
``previous_response_id`` is already expanded into the input, and the answer is
stored by the gateway), any other gets it translated to chat, as a translated
alias would. A request using what chat cannot carry (built-in tools, reasoning
and search items) is planned on deployments with the Responses API only.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InvalidRequest, PermissionDenied
from policies.routing import Alias, Deployment
from router.attempts import unavailable
from router.context import RequestContext
from router.responses_surface import translated
from serving.base import EngineRequest, JsonObject, Kind, serves_responses

# OpenAI refuses a smaller `max_output_tokens`; a budget's tighter bound is left to the stream meter.
MIN_OUTPUT_TOKENS = 16


def native_alias(alias: Alias) -> bool:
    """Whether any deployment of ``alias`` (its canary's included) has the Responses API."""
    return any(serves_responses(d.engine) for d in (*alias.deployments, *alias.candidate))


@dataclass(slots=True)
class ResponsesContext(RequestContext):
    # What the request uses that only an upstream with the Responses API serves, or None.
    requires: str | None = None

    def servable(self, deployments: list[Deployment]) -> list[Deployment]:
        if self.requires is None:
            return deployments
        native = [d for d in deployments if serves_responses(d.engine)]
        if native:
            return native
        others = [d for d in self.snapshot.router.get(self.alias).deployments if serves_responses(d.engine)]
        if any(not d.breaker.available() for d in others):  # down or cooling down: a retry may find one
            raise unavailable(self.alias, others)
        if others:  # left out by the tenant's policy
            raise PermissionDenied(
                f"No deployment of `{self.alias}` with the Responses API may receive this request under the tenant's policy.",
                code="no_permitted_deployment",
            )
        raise InvalidRequest(
            f"This request uses {self.requires}, which only a deployment with the Responses API serves; `{self.alias}` has none.",
            code="unsupported_value",
        )

    def engine_request(self, deployment: Deployment) -> EngineRequest:
        # request --> engine input: the Responses body as it is, or translated to chat.
        source = self.source(deployment)
        model = deployment.config.model
        if serves_responses(deployment.engine):
            return self._request("responses", upstream_body(source, model, self.max_tokens))
        body = {**translated(source), "model": model}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return self._request("chat", body)

    def _request(self, kind: Kind, body: JsonObject) -> EngineRequest:
        return EngineRequest(
            kind=kind,
            body=body,
            request_id=self.request_id,
            tenant=self.principal.tenant,
            stream=self.stream,
            include_usage=self.include_usage,
            session_id=self.session_id,
            # The W3C trace context the upstream continues (an attempt's span when traced).
            traceparent=self.traceparent,
            tracestate=self.tracestate,
        )


def upstream_body(source: JsonObject, model: str, max_tokens: int | None) -> JsonObject:
    """The body an upstream with the Responses API is sent: nothing stored there, nothing it would not find."""
    items = [out for out in map(_upstream_item, source["input"]) if out is not None]
    body = {**source, "model": model, "input": items, "store": False}
    if max_tokens is not None:
        body["max_output_tokens"] = max(max_tokens, MIN_OUTPUT_TOKENS)
    return body


def _upstream_item(item: JsonObject) -> JsonObject | None:
    """A canonical item as the upstream takes it as input.

    The ids the gateway gave the client's own messages and tool results name
    nothing upstream (input messages have no id there); an answer's items keep
    theirs, which its reasoning items refer to. A reasoning item without its
    encrypted content points at state the upstream did not keep (``store:
    false``) and is left out.
    """
    kind = item["type"]
    if (kind == "message" and item["role"] != "assistant") or kind == "function_call_output":
        return {k: v for k, v in item.items() if k != "id"}
    if kind == "reasoning" and not item.get("encrypted_content"):
        return None
    return item
