"""A real S3 endpoint for tests: moto's server in a subprocess on a free local port.

Import the fixtures into a test module with
``from tests.s3_server import moto_endpoint, s3_env  # noqa: F401``.
``moto_endpoint`` (session) yields the endpoint URL; ``s3_env`` (per test) also sets dummy
credentials in the environment and returns the endpoint.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def start_moto(timeout_s: float = 30.0) -> tuple[str, subprocess.Popen]:
    """Start moto's S3 server; return (endpoint URL, process) once it answers HTTP."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(_server_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {process.returncode}")
        try:
            opener.open(endpoint + "/", timeout=1.0).close()
            return endpoint, process
        except urllib.error.HTTPError:
            return endpoint, process  # any HTTP answer means it is up
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    stop(process)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout_s:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """Stop the server we started, by its pid."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def upload_tree(local_dir: str | os.PathLike, bucket: str, prefix: str, endpoint: str) -> None:
    """Copy a local folder to s3://bucket/prefix/..., creating the bucket if needed."""
    client = s3_client(endpoint)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    base = Path(local_dir)
    for path in sorted(base.rglob("*")):
        if path.is_file():
            key = "/".join(p for p in (prefix.strip("/"), path.relative_to(base).as_posix()) if p)
            client.upload_file(str(path), bucket, key)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    endpoint, process = start_moto()
    try:
        yield endpoint
    finally:
        stop(process)


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return moto_endpoint
