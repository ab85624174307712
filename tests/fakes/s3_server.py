"""A real S3 API for tests: moto's server as a subprocess, with an IAM user, its access key and a bucket.

``checking_signatures()`` turns moto's authentication on: within it a request
signed wrongly, or with another key, is refused as AWS would refuse it. It is
off otherwise because moto checks a signature against the query string as
decoded, so it refuses any correctly signed listing whose ``prefix`` holds a
``/`` (boto3's own included); the signing of those is checked against AWS's
published examples and botocore instead (tests/unit/router/test_s3_sigv4.py).
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REGION = "us-east-1"
START_TIMEOUT_S = 30.0


@dataclass
class S3Server:
    url: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    popen: subprocess.Popen[bytes]

    def state(self, **overrides: Any) -> dict[str, Any]:
        """``state.s3`` for this server, the secret key passed by the environment variable ``secret_env``."""
        s3 = {
            "endpoint_url": self.url, "bucket": self.bucket, "region": REGION, "path_style": True,
            "access_key_id": self.access_key_id, "secret_access_key": {"env": "SLUICEGATE_TEST_S3_SECRET"},
        }  # fmt: skip
        return {**s3, **overrides}

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under ``prefix`` (asked with boto3, as an independent client)."""
        client = self.boto()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def multipart_uploads(self) -> list[str]:
        return [u["Key"] for u in self.boto().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])]

    def boto(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
        )  # fmt: skip

    @contextmanager
    def checking_signatures(self) -> Iterator[None]:
        httpx.post(self.url + "/moto-api/reset-auth", content=b"0", timeout=5.0).raise_for_status()
        try:
            yield
        finally:
            httpx.post(self.url + "/moto-api/reset-auth", content=b"inf", timeout=5.0).raise_for_status()

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_s3_server(log: Path) -> S3Server:
    import boto3

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=handle, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"moto exited with {popen.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/moto-api/", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError("moto did not start")
        time.sleep(0.1)
    setup = {"endpoint_url": url, "region_name": REGION, "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="sluicegate")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="sluicegate", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="sluicegate")["AccessKey"]
    bucket = f"sluicegate-{secrets.token_hex(4)}"
    boto3.client("s3", **setup).create_bucket(Bucket=bucket)
    return S3Server(url, bucket, key["AccessKeyId"], key["SecretAccessKey"], popen)
