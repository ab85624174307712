"""One error hierarchy for the whole gateway.

Every class knows its HTTP status, its OpenAI ``type`` and ``code`` and whether a
retry against another deployment could help. ``error_body`` is the only place an
error becomes bytes on the wire. Messages never carry prompt text, keys or tokens.
"""

from __future__ import annotations

import msgspec


class ErrorDetail(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorDetail


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    retryable: bool = False
    # The failure shows the deployment is down for every request, not only this one,
    # so it counts toward the deployment's circuit breaker whoever sent the request.
    deployment_down: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def detail(self) -> ErrorDetail:
        return ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)

    # Set once the request had an id (it reached the pipeline): the answer names it, as a success would.
    request_id: str | None = None
    # What admission refused, for metrics and budget alerts (never shown to the client): the limit's
    # kind ("requests", "tokens", "concurrency") or the key of the budget that was spent.
    refused: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {} if self.request_id is None else {"x-request-id": self.request_id}
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, int(self.retry_after + 0.999)))
        return headers


# --- client errors -----------------------------------------------------------


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class InsufficientQuota(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


# --- gateway and upstream errors ---------------------------------------------


class InternalError(GatewayError):
    status = 500


class UpstreamError(GatewayError):
    """The upstream failed in a way another deployment might not."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"
    retryable = True


class UpstreamConnectError(UpstreamError):
    code = "upstream_unreachable"
    deployment_down = True


class UpstreamUnavailable(UpstreamError):
    """The upstream says it serves nobody now (502, 503, 529, the gateway's credentials refused)."""

    deployment_down = True


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamConnectTimeout(UpstreamTimeout):
    """No connection within the connect timeout: the upstream is down, not slow on one request."""

    deployment_down = True


class UpstreamRejected(GatewayError):
    """The upstream refused the request itself (4xx): the client's to fix, not retryable."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status


class Overloaded(GatewayError):
    status = 503
    type = "server_error"
    code = "overloaded"
    retryable = True


class NoHealthyDeployment(GatewayError):
    status = 503
    type = "server_error"
    code = "no_healthy_deployment"


# The HTTP server's own refusals (routing, body limits) --> the class that answers them.
HTTP_STATUS_ERRORS: dict[int, type[GatewayError]] = {
    400: InvalidRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}

_encoder = msgspec.json.Encoder()


def error_body(exc: GatewayError) -> bytes:
    return _encoder.encode(ErrorEnvelope(error=exc.detail()))


def sse_error_event(exc: GatewayError) -> bytes:
    """An SSE event carrying an error; the OpenAI SDK raises it as ``APIError``."""
    return b"data: " + error_body(exc) + b"\n\n"
