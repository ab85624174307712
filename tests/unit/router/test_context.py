from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from core.principal import Principal
from router.context import RequestContext


def _deployment(privacy: str) -> Any:
    return SimpleNamespace(config=SimpleNamespace(privacy=privacy, model=f"{privacy}-model"))


def _ctx(**fields: Any) -> RequestContext:
    body = {"model": "alias", "messages": [{"role": "user", "content": "mail ann@example.com"}]}
    return RequestContext("r1", SimpleNamespace(version=1), Principal(tenant="t", key_id="k"), "chat", "chat", "alias", body, **fields)  # type: ignore[arg-type]


def test_the_budget_bound_reaches_every_deployment_and_the_redacted_body_only_the_cloud() -> None:
    redacted = {"model": "alias", "messages": [{"role": "user", "content": "mail <EMAIL_ADDRESS>"}]}
    ctx = _ctx(cloud_body=redacted, max_tokens=17)
    cloud = ctx.engine_request(_deployment("cloud")).body
    local = ctx.engine_request(_deployment("self_hosted")).body
    assert cloud == {**redacted, "model": "cloud-model", "max_tokens": 17}
    assert local == {**ctx.body, "model": "self_hosted-model", "max_tokens": 17}
    assert "max_tokens" not in ctx.body  # the client's own request is left as it came


def test_without_a_budget_bound_the_body_passes_as_it_came() -> None:
    ctx = _ctx()
    assert ctx.engine_request(_deployment("cloud")).body == {**ctx.body, "model": "cloud-model"}
