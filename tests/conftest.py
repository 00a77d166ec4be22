"""Test-wide settings: one torch thread. With two threads per small op next to busy neighbours a
2-core box measured 1000x slower (docs/performance.md keeps benchmarks to one thread for the same reason)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One full run on the tiny set and an image without classes, shared by the modules that need a
    finished run: test_pipeline (whose re-run tests put it back as it was) and test_review (which
    works on a copy of its output)."""
    from tests.pipeline_helpers import (
        add_image_without_classes,
        make_tiny_voc,
        run_stages,
        start_local_ray,
        tiny_config,
    )

    base = tmp_path_factory.mktemp("pipeline")
    data = make_tiny_voc(base / "voc")
    add_image_without_classes(data)  # 8 images with classes and one without: every stage takes it
    config = tiny_config(data, str(base / "out"))
    start_local_ray()
    return config, run_stages(config)
