"""What a stage's driver pays to check and name its model on S3, with and without the fingerprint.

    python bench/model_files.py [--archs resnet18 resnet50] [--repeats 3]

Every stage that uses a model first checks it (kind, backbone, classes) and records its sha256
prefix in the Parquet metadata of what it writes. Without a fingerprint both read the whole model
file; with one (what the training stages write) they read a small JSON beside it. The store is
moto's S3 server on a local port (as in the tests), so the absolute times are of that server; the
ratio is what carries over. Both variants are timed alternately in one run. Prints one JSON
object (the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import machine  # noqa: E402
from ray_wsis.config import load_config  # noqa: E402
from ray_wsis.data.synthetic import make_synthetic_voc  # noqa: E402
from ray_wsis.models.checkpoints import build_model, checkpoint_bytes, checkpoint_header  # noqa: E402
from ray_wsis.pipeline.context import StageContext  # noqa: E402
from ray_wsis.pipeline.model_files import write_model  # noqa: E402
from ray_wsis.storage import write_bytes_atomic  # noqa: E402
from tests.s3_server import CREDENTIALS, s3_client, start_moto, stop  # noqa: E402


def _driver_seconds(ctx: StageContext) -> float:
    start = time.perf_counter()
    ctx.check_model("cam", "train-cam")
    ctx.model_id("cam")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    endpoint, server = start_moto()
    results: dict[str, Any] = {}
    try:
        s3_client(endpoint).create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as folder:
            data = os.path.join(folder, "voc")
            make_synthetic_voc(data, n_train=4, n_val=0, size=(64, 80), seed=0)
            for arch in args.archs:
                contexts = {}
                payload = checkpoint_bytes(build_model("cam", arch, 20), "cam", arch, 20)
                for variant in ("fingerprint", "whole file"):
                    config = load_config(
                        None,
                        [
                            f"dataset.root={data}",
                            f"output=s3://bench/{arch}/{variant.replace(' ', '-')}",
                            f"storage.endpoint_url={endpoint}",
                            f"model.backbone={arch}",
                        ],
                    )
                    ctx = StageContext(config)
                    location = ctx.layout.model("cam")
                    if variant == "fingerprint":
                        write_model(location, payload, checkpoint_header("cam", arch, 20))
                    else:
                        write_bytes_atomic(location, payload)
                    contexts[variant] = ctx
                times: dict[str, list[float]] = {v: [] for v in contexts}
                for _ in range(args.repeats):
                    for variant, ctx in contexts.items():
                        times[variant].append(_driver_seconds(ctx))
                medians = {v: statistics.median(t) for v, t in times.items()}
                results[arch] = {
                    "model_mb": round(len(payload) / 1e6, 1),
                    "seconds_fingerprint": round(medians["fingerprint"], 4),
                    "seconds_whole_file": round(medians["whole file"], 3),
                    "speedup": round(medians["whole file"] / max(medians["fingerprint"], 1e-9), 1),
                }
    finally:
        stop(server)
    print(json.dumps({"machine": machine(), "store": "moto_server (local)", "repeats": args.repeats, **results}))


if __name__ == "__main__":
    main()
