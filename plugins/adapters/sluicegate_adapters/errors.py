"""What an SCM call can end in, as classes of the gateway's one error tree.

Callers (task runners, workflows) read ``retryable``: a ``RateLimited`` or an
``Unavailable`` may succeed later, everything else is the task's to fix and must
not be retried. ``status`` is the SCM's own answer where it had one; an SCM
refusing the gateway's credentials is not the gateway's client's fault, so
``Unauthorized`` renders as a 502 like any other upstream failure.

Messages name the provider, the method and the path, never the token: the
transport scrubs it from anything a provider sends back before it gets here.
"""

from __future__ import annotations

from core.errors import GatewayError


class ScmError(GatewayError):
    status = 502
    type = "scm_error"
    code: str | None = "scm_error"
    retryable = False

    def __init__(self, message: str, *, provider: str, scm_status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.provider = provider
        self.scm_status = scm_status


class BadRequest(ScmError):
    status = 400
    code = "scm_bad_request"


class Unauthorized(ScmError):
    """401, or a 403 that is not a rate limit: the token is wrong, expired, or lacks a scope."""

    code = "scm_unauthorized"


class NotFound(ScmError):
    status = 404
    code = "scm_not_found"


class Conflict(ScmError):
    status = 409
    code = "scm_conflict"


class Unprocessable(ScmError):
    status = 422
    code = "scm_unprocessable"


class RateLimited(ScmError):
    """The provider asked for a wait; ``retry_after`` says how long (None: it did not say)."""

    status = 429
    code = "scm_rate_limited"
    retryable = True


class Unavailable(ScmError):
    """A 5xx, a dropped connection or a timeout: the provider, not the request, failed."""

    code = "scm_unavailable"
    retryable = True
