"""The whole pipeline with its dataset and its output on an S3 server (moto) started here."""

from __future__ import annotations

import json
import os

import pytest

from ray_wsis.pipeline.context import StageContext, check_output
from ray_wsis.storage import StorageError, resolve
from tests.pipeline_helpers import make_tiny_voc, start_local_ray, tiny_config
from tests.s3_server import CREDENTIALS, moto_endpoint, s3_client, upload_tree  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture()
def s3_ray(moto_endpoint, monkeypatch):
    """Credentials in the environment *before* Ray starts, so every worker inherits them."""
    import ray

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    ray.shutdown()
    start_local_ray()
    yield moto_endpoint
    ray.shutdown()


def test_run_reads_and_writes_s3(s3_ray, tmp_path):
    from ray_wsis.labels import iter_pseudo_labels
    from ray_wsis.pipeline.run import run_all

    endpoint = s3_ray
    client = s3_client(endpoint)
    client.create_bucket(Bucket="data")
    client.create_bucket(Bucket="labels")
    upload_tree(make_tiny_voc(tmp_path / "voc"), "data", "voc", endpoint)
    config = tiny_config("s3://data/voc", "s3://labels/run1", f"storage.endpoint_url={endpoint}")
    check_output(config)
    results = run_all(StageContext(config, log=lambda _m: None))
    assert results["make-pseudo-labels"]["processed"] == 8
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="labels", Prefix="run1/")["Contents"]]
    assert any(k.startswith("run1/pseudo_labels/part-") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("run1/checkpoints/tiny-cam/epoch_000/") for k in keys)
    assert "run1/models/irnet.pt" in keys and "run1/metrics.json" in keys
    metrics = json.loads(client.get_object(Bucket="labels", Key="run1/metrics.json")["Body"].read())
    assert metrics["images"]["semantic"] == 8
    rows = list(iter_pseudo_labels("s3://labels/run1", config.storage))
    assert sorted(r["image_id"] for r in rows) == sorted({r["image_id"] for r in rows})
    assert len(rows) == 8


def test_unreachable_endpoint_fails_fast_with_one_message(tmp_path, monkeypatch):
    import socket
    import time

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
