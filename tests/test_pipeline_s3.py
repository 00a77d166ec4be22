"""S3 failures of the pipeline. The whole pipeline on S3 runs as a Ray job in
tests/test_jobs.py::test_submit_pipeline_job_reading_and_writing_s3 (one run covers both)."""

from __future__ import annotations

import socket

import pytest

from ray_wsis import storage
from ray_wsis.pipeline.context import check_output
from ray_wsis.storage import StorageError, resolve
from tests.pipeline_helpers import tiny_config
from tests.s3_server import CREDENTIALS

SECRET = "pipeline-s3-secret-6ab1"  # distinctive, so that finding it in a message means it leaked


def test_unreachable_endpoint_fails_fast_with_one_message(tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    connects: list[tuple[tuple[str, int], float]] = []
    real_connect = socket.create_connection

    def counting_connect(address, timeout=None, *args, **kwargs):
        connects.append((address, timeout))
        return real_connect(address, timeout, *args, **kwargs)

    monkeypatch.setattr(storage.socket, "create_connection", counting_connect)
    with socket.socket() as sock:  # bound, never listening: connecting is refused, and the port stays ours
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        endpoint = f"http://127.0.0.1:{port}"
        config = tiny_config(str(tmp_path), "s3://labels/x", f"storage.endpoint_url={endpoint}")
        with pytest.raises(StorageError) as info:
            check_output(config)
    message = str(info.value)
    # the fast path: one connection attempt with a time limit, before any S3 request and its retries
    assert message.startswith(f"object store endpoint {endpoint} is unreachable"), message
    assert connects == [(("127.0.0.1", port), connects[0][1])] and 0 < connects[0][1] <= 10, connects
    assert "\n" not in message and info.value.__cause__ is None and info.value.__suppress_context__
    assert SECRET not in message
    assert resolve("s3://labels/x", config.storage).path == "labels/x"
