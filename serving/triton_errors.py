"""Triton failures --> the gateway's error hierarchy.

Triton reports failures two ways: as a gRPC status on the call (unary
``ModelInfer``, or the whole ``ModelStreamInfer`` stream), and in-band as an
``error_message`` on one stream response, which has no status code. Upstream
messages are never copied into ours: they can quote request content.
"""

from __future__ import annotations

from core.errors import (
    GatewayError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)

# Substrings of Triton's in-band messages for a request the client must fix.
_BAD_INPUT_MARKERS = (
    "unexpected inference input",
    "unexpected shape",
    "missing required input",
    "data-type is",
    "expects datatype",
)
_NOT_FOUND_MARKERS = ("unknown model", "is not found")
# A request's JSON constraint the backend could not compile or enforce.
_CONSTRAINT_MARKERS = ("json schema", "structured output", "xgrammar", "grammar")
# TensorRT-LLM's answer to a guide when the model has no guided decoder configured.
_NO_GUIDED_DECODER = "guideddecoder is not setup"


def status_error(code_name: str) -> GatewayError:
    """The error for a gRPC status, given by name (``"UNAVAILABLE"``)."""
    if code_name == "UNAVAILABLE":
        return UpstreamConnectError("Triton server is unavailable")
    if code_name == "DEADLINE_EXCEEDED":
        return UpstreamTimeout("Triton request timed out")
    if code_name == "RESOURCE_EXHAUSTED":
        return UpstreamRateLimited("Triton server is out of capacity")
    if code_name == "INVALID_ARGUMENT":
        return UpstreamRejected("Triton rejected the request as invalid", status=400)
    if code_name == "NOT_FOUND":
        return UpstreamRejected("Triton model not found", status=404)
    return UpstreamError(f"Triton request failed ({code_name})")


def in_band_error(message: str) -> GatewayError:
    """The error for a stream response's ``error_message``."""
    text = message.lower()
    if any(marker in text for marker in _NOT_FOUND_MARKERS):
        return UpstreamRejected("Triton model not found", status=404)
    if any(marker in text for marker in _BAD_INPUT_MARKERS):
        return UpstreamRejected("Triton rejected the request inputs", status=400)
    if _NO_GUIDED_DECODER in text:
        return UpstreamError("Triton model has no guided decoding set up; check options.structured_outputs")
    if any(marker in text for marker in _CONSTRAINT_MARKERS):
        return UpstreamRejected("Triton could not enforce the requested output format", status=400)
    if "unavailable" in text:
        return UpstreamConnectError("Triton model is unavailable")
    return UpstreamError("Triton model reported an error")


def aborted_error() -> GatewayError:
    return UpstreamError("Triton request was aborted", code="aborted")
