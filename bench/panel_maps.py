"""What the report's network-free panels save: the bytes per image that storing IRNet's maps would cost.

The report draws its panels from what a run stores (docs/architecture.md, "The report"). The
alternative was to store, for every image, a preview of the two maps the report used to re-run
IRNet for: the boundary (uint8 PNG) and the displacement (dy, dx as a two-channel uint8 PNG, each
image's own peak at 127), at stride 4. This runs the finished run's IRNet on the first
``--images`` images of its infer split, encodes both, writes them as the shard sink writes a table
(zstd Parquet), and compares the bytes per image with the run's own tables.

    python bench/panel_maps.py --output ./demo_output --images 60

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402
from ray_wsis.config import load_config  # noqa: E402
from ray_wsis.data.sources import build_source, load_image  # noqa: E402
from ray_wsis.masks import encode_gray_png  # noqa: E402
from ray_wsis.method.predictors import IRNetPredictor, load_model  # noqa: E402
from ray_wsis.pipeline.sink import table_bytes  # noqa: E402


def previews(boundary: np.ndarray, displacement: np.ndarray) -> dict[str, Any]:
    """The PNGs a stored preview would hold: the boundary as uint8, (dy, dx) around 128."""
    peak = max(float(np.abs(displacement).max()), 1e-6)
    quantised = np.rint(displacement / peak * 127 + 128).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(quantised.transpose(1, 2, 0)), "LA").save(buffer, "PNG")
    return {
        "boundary": encode_gray_png(np.rint(np.clip(boundary, 0, 1) * 255).astype(np.uint8)),
        "displacement": buffer.getvalue(),
        "displacement_peak": peak,
    }


def per_image(folder: Path) -> float:
    """Bytes per row of a stage folder's shards."""
    paths = sorted(folder.glob("part-*.parquet"))
    rows = sum(pq.read_metadata(p).num_rows for p in paths)
    return sum(p.stat().st_size for p in paths) / max(rows, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="a finished IRNet run's output folder")
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    output = Path(args.output)
    config = load_config(str(output / "config.yaml"), [])
    predictor = IRNetPredictor(load_model(config, "irnet"), config.walk)
    source = build_source(config.dataset, config.storage)
    records = sorted(source.records(config.dataset.infer_split), key=lambda r: r.image_id)[: args.images]
    rows, shape = [], None
    start = time.perf_counter()
    for record in records:
        boundary, displacement = predictor.boundary_displacement(load_image(record, config.storage))
        shape = tuple(boundary.shape)
        rows.append({"image_id": record.image_id, **previews(boundary.numpy(), displacement.numpy())})
    seconds = time.perf_counter() - start
    table = pa.Table.from_pylist(rows)
    ids = len(table_bytes(table.select(["image_id"])))
    stored = {
        "boundary": (len(table_bytes(table.select(["image_id", "boundary"]))) - ids) / len(rows),
        "boundary_and_displacement": (len(table_bytes(table)) - ids) / len(rows),
    }
    print(
        json.dumps(
            {
                "machine": machine(),
                "images": len(rows),
                "stride4_maps": shape,
                "irnet_cpu_seconds_per_image": round(seconds / max(len(rows), 1), 3),
                "preview_bytes_per_image": {k: round(v) for k, v in stored.items()},
                "run_bytes_per_image": {
                    name: round(per_image(output / name)) for name in ("cams", "scores", "pseudo_labels")
                },
            }
        )
    )


if __name__ == "__main__":
    main()
