"""A real S3 endpoint for tests: ``moto_server`` on loopback with IAM authentication switched on.

The server starts once per test session (the ``moto_s3`` fixture in ``tests/integration/conftest.py``), gets an IAM
user whose access key is the only one it accepts, and is killed at the end. Tests use ``server.credentials`` and
``server.client()``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from tests.support.servers import free_port

REGION = "us-east-1"


@dataclass
class MotoServer:
    """A running moto_server process and the one access key it accepts."""

    url: str
    process: subprocess.Popen[bytes]
    credentials: dict[str, str] = field(default_factory=dict, repr=False)

    def client(self, **overrides: Any) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, **{**self.credentials, **overrides})

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=5).read()


def start_moto_server(log_dir: Path, timeout: float = 20.0) -> MotoServer:
    """Start moto_server from this venv on a free loopback port, wait until it answers, enable IAM auth."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(log_dir / "moto_server.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start on {url}; see {log_dir / 'moto_server.log'}") from None
            time.sleep(0.1)
    iam = boto3.client("iam", endpoint_url=url, region_name=REGION, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_user(UserName="asr-optimize")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="asr-optimize", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="asr-optimize")["AccessKey"]
    _post(f"{url}/moto-api/reset-auth", b"0")  # from now on only this key is accepted
    creds = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
    return MotoServer(url=url, process=process, credentials=creds)

