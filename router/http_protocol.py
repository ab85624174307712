"""The HTTP server's own refusals in the OpenAI error shape.

Requests the HTTP parser cannot take (a malformed request line, an unknown
method, bytes not allowed in a header) never reach the application: uvicorn
answers them itself, in plain text. This protocol answers them as the
application answers everything else.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.errors import InvalidRequest, error_body
from router import access_log

_ERROR = InvalidRequest("The request is not valid HTTP/1.1: check the request line, the method and the header bytes.", code="invalid_http")
_BODY = error_body(_ERROR)
_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


class JsonErrorHttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        # uvicorn's message names nothing the client sent; ours says the same in the API's shape.
        self.transport.write(_RESPONSE)
        self.transport.close()
        access_log.refused_unparsed(_ERROR)
