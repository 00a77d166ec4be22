"""A real S3 endpoint for tests: moto's server in a subprocess on a free local port.

Import the fixtures into a test module with
``from tests.s3_server import moto_endpoint, s3_env  # noqa: F401``.
``moto_endpoint`` (session) yields the endpoint URL; ``s3_env`` (per test) also sets dummy
credentials in the environment and returns the endpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_wsis.config import StorageConfig
from ray_wsis.storage import resolve

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

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


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


# -- SeaweedFS (`weed mini`): a real S3 server that persists, for restart and cluster tests ----------

KEY, SECRET = "weedkey", "weed-s3cr3t-value-123"


def weed_binary() -> str:
    found = Path(sys.executable).with_name("weed")
    return str(found) if found.exists() else (shutil.which("weed") or "")


def free_weed_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # weed also listens on port + 10000 (gRPC)
        if port + 10000 < 65535 and port not in ports:
            ports.append(port)
    return ports


class Weed:
    """One `weed mini` server; start() and stop() can be repeated on the same data folder."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports = free_weed_ports(5)
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 60.0) -> None:
        s3, master, volume, filer, admin = self.ports
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "S3_BUCKET": "labels"}
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "mini",
                f"-dir={self.data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-s3.port={s3}",
                f"-master.port={master}",
                f"-volume.port={volume}",
                f"-filer.port={filer}",
                f"-admin.port={admin}",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            try:
                opener.open(self.endpoint + "/labels", timeout=1).close()
                return
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 404):  # answering; bucket may still be on its way
                    if self._bucket_ready():
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("weed mini did not start")

    def _bucket_ready(self) -> bool:
        try:
            location = resolve("s3://labels/probe", StorageConfig(endpoint_url=self.endpoint, retries=1))
            location.fs.get_file_info(location.path)
            return True
        except OSError:
            return False

    def stop(self, hard: bool = False) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL if hard else signal.SIGTERM)
            self.process.wait(timeout=30)
