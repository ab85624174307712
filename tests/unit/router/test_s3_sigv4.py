"""SigV4 as AWS documents it (its published S3 examples) and as botocore computes it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from router.s3_sigv4 import EMPTY_SHA256, Credentials, canonical_query, sign, uri_encode

# The example credentials and bucket of AWS's "Signature Calculations for the Authorization Header" page.
EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
HOST = "examplebucket.s3.amazonaws.com"
WHEN = datetime(2013, 5, 24, tzinfo=UTC)


def _signature(headers: dict[str, str]) -> str:
    return headers["authorization"].rsplit("Signature=", 1)[1]


@pytest.mark.parametrize(
    ("method", "path", "query", "extra", "payload", "expected"),
    [
        ("GET", "/test.txt", {}, {"Range": "bytes=0-9"}, b"", "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
        (
            "PUT", "/test$file.text", {}, {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
            b"Welcome to Amazon S3.", "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        ),
        ("GET", "/", {"lifecycle": ""}, {}, b"", "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        ("GET", "/", {"max-keys": "2", "prefix": "J"}, {}, b"", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
    ],
)  # fmt: skip
def test_awss_published_examples(
    method: str, path: str, query: dict[str, str], extra: dict[str, str], payload: bytes, expected: str
) -> None:
    headers = sign(
        EXAMPLE, method=method, host=HOST, path=uri_encode(path, keep_slash=True), query=query, headers=extra,
        payload_sha256=hashlib.sha256(payload).hexdigest(), region="us-east-1", now=WHEN,
    )  # fmt: skip
    assert _signature(headers) == expected
    assert headers["x-amz-date"] == "20130524T000000Z" and headers["host"] == HOST


def test_a_listing_with_slashes_in_its_query_signs_as_botocore_does() -> None:
    botocore_auth = pytest.importorskip("botocore.auth")
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    query = {"list-type": "2", "prefix": "tenants/ab c/asc/", "start-after": "tenants/ab c/asc/0001.file-x.batch", "max-keys": "1000"}
    path = "/bucket/" + uri_encode("key with space/and+plus", keep_slash=True)
    ours = sign(
        EXAMPLE, method="GET", host="s3.example.com:9000", path=path, query=query, headers={}, payload_sha256=EMPTY_SHA256,
        region="eu-west-1", now=WHEN,
    )  # fmt: skip
    request = AWSRequest(method="GET", url=f"http://s3.example.com:9000{path}?{canonical_query(query)}", headers={})
    request.headers["X-Amz-Content-SHA256"] = EMPTY_SHA256
    request.headers["X-Amz-Date"] = request.context["timestamp"] = "20130524T000000Z"
    # As moto checks a request: botocore's canonical request and signature at the request's own time.
    theirs = botocore_auth.S3SigV4Auth(BotoCredentials(EXAMPLE.access_key_id, EXAMPLE.secret_access_key), "s3", "eu-west-1")
    signature = theirs.signature(theirs.string_to_sign(request, theirs.canonical_request(request)), request)
    assert _signature(ours) == signature
    assert "%2F" in canonical_query(query) and "%20" in path


def test_a_session_token_is_signed_and_no_secret_is_shown() -> None:
    temporary = Credentials("ASIAEXAMPLE", "secret-value-123", session_token="token-value-456")
    headers = sign(
        temporary, method="GET", host=HOST, path="/x", query={}, headers={}, payload_sha256=EMPTY_SHA256, region="us-east-1", now=WHEN
    )  # fmt: skip
    assert headers["x-amz-security-token"] == "token-value-456"
    assert "x-amz-security-token" in headers["authorization"].split("SignedHeaders=")[1]
    assert "secret-value-123" not in repr(temporary) and "token-value-456" not in repr(temporary)
    assert "secret-value-123" not in str(headers)
