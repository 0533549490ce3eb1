"""A real S3-speaking server for tests: moto's server mode, in a child process on loopback.

Tests reach it through boto3 exactly as production code does; nothing is patched.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

BUCKET = "orchestrator-test"

MOTO_SERVER = textwrap.dedent(
    """
    import sys
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()  # until the test session closes our stdin (or dies)
    """
)


@dataclass(frozen=True)
class Moto:
    endpoint: str
    client: Any  # a plain boto3 S3 client, to reach behind the store's back
    started_in: float

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}&region=us-east-1"


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Fake credentials, and nothing from the machine's own AWS configuration."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


class MotoNotStarted(RuntimeError):
    """moto's server did not come up."""


@contextmanager
def moto_server(log: Path, bucket: str) -> Iterator[tuple[str, Any]]:
    """moto's S3 server in a child process on loopback with ``bucket`` created; yields its
    endpoint and a plain boto3 client. It stops when we close its stdin (or die)."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", MOTO_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise MotoNotStarted(f"moto server did not start: {line!r}\n{log.read_text()[-2000:]}")
        endpoint = f"http://127.0.0.1:{int(line)}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        try:
            yield endpoint, client
        finally:
            client.close()
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="session")
def moto(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    log = tmp_path_factory.mktemp("moto") / "server.log"
    started = time.monotonic()
    try:
        with moto_server(log, BUCKET) as (endpoint, client):
            yield Moto(endpoint, client, time.monotonic() - started)
    except MotoNotStarted as exc:
        pytest.fail(str(exc))
