"""Schemathesis over every route of the OpenAPI document the app generates: no server errors.

Cases are generated from the schema (request bodies included: the OpenAI routes
declare theirs), sent to a real gateway subprocess in front of the fake
upstream, and every answer must be below 500 and, when it is an error, in the
OpenAI error shape. Generation is bounded and derandomized so the suite stays
fast and a failure replays.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from core.config import Config
from router.app import create_app
from router.openapi import bodies, with_bodies

pytestmark = pytest.mark.filterwarnings("ignore")
# Aliases the e2e gateway serves, so that generated bodies reach the upstream
# path as well as the validation path.
_ALIAS = {
    "/v1/chat/completions": "fake-model",
    "/v1/completions": "fake-model",
    "/v1/embeddings": "embed-model",
    "/v1/responses": "fake-model",
    "/v1/messages": "fake-model",
    "/v1/messages/count_tokens": "fake-model",
}
MAX_EXAMPLES = 30


def _document() -> dict[str, Any]:
    # Routes do not depend on the config: a one-deployment app describes them all.
    config = msgspec.convert(
        {
            "deployments": [{"name": "d", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}],
            "models": [{"alias": "m", "deployments": ["d"]}],
        },
        Config,
    )
    app = create_app(config)
    return with_bodies(app.openapi_schema.to_schema(), bodies(app.routes))


schema = schemathesis.openapi.from_dict(_document())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_route_answers_a_server_error(case: Any, gateway: Any, api_key: str) -> None:
    alias = _ALIAS.get(case.path)
    if alias is not None and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = alias
    response = case.call(base_url=gateway.url, headers={"authorization": f"Bearer {api_key}"}, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    if response.status_code < 400:
        return
    body = response.json()
    if case.path.startswith("/v1/messages"):
        # The Anthropic Messages surface answers in Anthropic's error shape.
        assert body.get("type") == "error" and {"type", "message"} <= set(body["error"]), body
    else:
        assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
