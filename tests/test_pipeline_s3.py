"""S3 failures of the pipeline. The whole pipeline on S3 runs as a Ray job in
tests/test_jobs.py::test_submit_pipeline_job_reading_and_writing_s3 (one run covers both)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from ray_wsis.pipeline.context import check_output
from ray_wsis.storage import StorageError, resolve
from tests.pipeline_helpers import tiny_config
from tests.s3_server import CREDENTIALS


def test_unreachable_endpoint_fails_fast_with_one_message(tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tiny_config(str(tmp_path), "s3://labels/x", f"storage.endpoint_url=http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(StorageError, match="unreachable"):
        check_output(config)
    assert time.monotonic() - start < 10
    assert resolve("s3://labels/x", config.storage).path == "labels/x"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "testing"
