"""Providers' error codes the gateway passes on: a fixed vocabulary, never the upstream's free text.

An upstream's error ``code`` becomes the request's error code: the client's
error body, the access log, the ledger row, span attributes and a metric
label. Taken verbatim it would let an upstream (or a prompt it quotes) write
arbitrary text into all of them, and grow a label without bound. A code
outside this list is dropped, and the error keeps the gateway's own code.
"""

from __future__ import annotations

# OpenAI (and the servers that copy its error envelope).
_OPENAI = (
    "context_length_exceeded", "invalid_api_key", "model_not_found", "rate_limit_exceeded", "insufficient_quota",
    "invalid_request_error", "invalid_value", "invalid_type", "missing_required_parameter", "unsupported_parameter",
    "unsupported_value", "unknown_parameter", "content_policy_violation", "content_filter", "invalid_prompt",
    "string_above_max_length", "string_below_min_length", "array_above_max_length", "array_below_min_length",
    "integer_above_max_value", "integer_below_min_value", "decimal_above_max_value", "decimal_below_min_value",
    "invalid_image", "invalid_image_format", "invalid_image_url", "image_too_large", "image_parse_error",
    "invalid_function_parameters", "invalid_json_schema", "server_error", "invalid_file", "file_not_found",
    "batch_not_found", "response_not_found", "previous_response_not_found", "empty_array", "invalid_encoding_format",
)  # fmt: skip
# Anthropic's error types.
_ANTHROPIC = (
    "authentication_error", "permission_error", "not_found_error", "request_too_large", "rate_limit_error",
    "api_error", "overloaded_error", "billing_error", "timeout_error",
)  # fmt: skip
# Google's canonical status names (Gemini).
_GOOGLE = (
    "INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND",
    "ABORTED", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED", "CANCELLED", "DATA_LOSS", "UNKNOWN", "INTERNAL",
    "UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
)  # fmt: skip
KNOWN_CODES: frozenset[str] = frozenset(_OPENAI + _ANTHROPIC + _GOOGLE)


def known_code(code: str | None) -> str | None:
    """``code`` when it is one the providers document (or an HTTP status, as vLLM sends); None otherwise."""
    if code is None:
        return None
    if code in KNOWN_CODES:
        return code
    if len(code) == 3 and code.isdigit():
        return code
    return None
