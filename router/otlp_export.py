"""The OTLP/HTTP span exporter, its batches encoded by ``router.otlp_wire`` instead of protobuf objects.

opentelemetry's ``OTLPSpanExporter`` with everything else of its own: the
endpoint, headers, TLS, compression, timeout and retries (its client), its own
metrics and its request-size limit. Only the encoding is ours: the same bytes'
meaning (``tests/unit/router/test_otlp_wire.py``) at about half the CPU, on the
exporter's thread, which holds the GIL the event loop needs while it encodes.
Imported only when tracing exports over OTLP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError, _is_request_too_large
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

from router.otlp_wire import encode_spans

log = logging.getLogger("sluicegate.tracing")

__all__ = ["WireSpanExporter"]


class WireSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter.export`` as opentelemetry writes it, with ``router.otlp_wire``'s encoding."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            log.warning("tracing: the span exporter is shut down; a batch was dropped")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_spans(spans)
            except Exception as error:  # noqa: BLE001 - as opentelemetry's exporter: the batch fails, the next is tried
                log.error("tracing: a span batch could not be encoded (%s)", type(error).__name__)
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(data, self._max_request_size):
                log.warning("tracing: a span batch of %d bytes exceeds the exporter's limit; dropped", len(data))
                result.error = RequestPayloadTooLargeError(f"{len(data)} bytes exceeds max_request_size {self._max_request_size}")
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: sent.status_code} if sent.status_code is not None else None
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
