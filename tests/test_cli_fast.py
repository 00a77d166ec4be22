"""The everyday commands: read-only ones import no torch and no Ray, and each user mistake ends with
one `error:` line and exit status 2 (issue 25). No Ray starts here: every command runs in a
subprocess (pytest itself has imported torch, conftest.py) and fails or finishes before Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_wsis.pipeline.output_config import save_output_config
from ray_wsis.pipeline.schema import PSEUDO_LABELS, pseudo_label_row
from tests.pipeline_helpers import make_tiny_voc, tiny_config

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import runpy, sys
sys.argv = ["ray-wsis", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("ray_wsis", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted(m for m in ("torch", "torchvision", "ray", "ray.data") if m in sys.modules)
print("IMPORTED " + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def cli(*args: str, cwd: Path = ROOT) -> tuple[int, str, str, list[str]]:
    """Run `python -m ray_wsis ARGS` in a subprocess; (status, stdout, stderr less the probe line,
    heavy modules it imported)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    lines = done.stderr.splitlines()
    probe = [line for line in lines if line.startswith("IMPORTED ")]
    heavy = probe[-1][len("IMPORTED ") :].split(",") if probe and probe[-1] != "IMPORTED " else []
    stderr = "\n".join(line for line in lines if not line.startswith("IMPORTED "))
    return done.returncode, done.stdout, stderr, heavy


@pytest.fixture(scope="module")
def finished_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An output with a recorded config and pseudo-label shards (written directly: no pipeline run)."""
    base = tmp_path_factory.mktemp("cli_fast")
    root = make_tiny_voc(base / "voc")
    config = tiny_config(root, str(base / "out"))
    save_output_config(config)
    rows = []
    for i in range(3):
        semantic = np.zeros((8, 10), np.uint8)
        semantic[2:5, 2:6] = 1
        masks = np.stack([semantic == 1, np.zeros_like(semantic, bool)])
        rows.append(
            pseudo_label_row(
                f"img{i}",
                8,
                10,
                [1],
                semantic,
                np.full((8, 10), 200, np.uint8),
                masks,
                np.array([1, 1]),
                np.array([0.9, 0.0], np.float32),
            )
        )
    folder = base / "out" / "pseudo_labels"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist([{k: r[k] for k in PSEUDO_LABELS.names} for r in rows], schema=PSEUDO_LABELS)
    pq.write_table(table, folder / "part-0000.parquet")
    return config.output


def test_read_only_commands_import_no_torch_and_no_ray(finished_output: str, tmp_path: Path) -> None:
    for args in (
        ("status", finished_output),
        ("status", finished_output, "--json"),
        ("config", "show", "--config", str(ROOT / "configs" / "demo.yaml")),
        ("export", "--labels", finished_output, "--format", "coco", "--out", str(tmp_path / "labels.json")),
        ("export", "--labels", finished_output, "--format", "voc", "--out", str(tmp_path / "voc")),
        ("visualize", "--labels", finished_output, "--out", str(tmp_path / "report"), "--n", "2"),
    ):
        code, out, err, heavy = cli(*args)
        assert code == 0, (args, err)
        assert heavy == [], (args, heavy)
    document = json.loads((tmp_path / "labels.json").read_text())
    assert len(document["images"]) == 3 and len(document["annotations"]) == 6
    assert len(os.listdir(tmp_path / "voc" / "SegmentationClass")) == 3
    assert len(os.listdir(tmp_path / "report" / "panels")) == 2  # no network, no model file: none in this output


def test_the_registry_and_the_run_chain_are_cheap() -> None:
    code = (
        "import sys; import ray_wsis.cli, ray_wsis.status, ray_wsis.stages.run, ray_wsis.stages.registry;"
        "print(sorted(m for m in ('torch', 'ray', 'ray.data') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_every_registered_stage_body_lives_in_its_module() -> None:
    """The registry declares each stage; its body is a function of stages/<module>.py, found by name."""
    import importlib

    from ray_wsis.stages import registry

    for pipeline in registry.PIPELINES:
        for stage in pipeline:
            module, function = stage.body.__qualname__.split(".")
            assert callable(getattr(importlib.import_module(f"ray_wsis.stages.{module}"), function)), stage.name
            assert not hasattr(importlib.import_module(f"ray_wsis.stages.{module}"), "STAGE")  # one declaration


def one_error(code: int, out: str, err: str) -> str:
    """The single `error:` line a user mistake must end with (exit status 2, no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    assert "Traceback" not in err + out
    return lines[0]


def test_export_of_a_folder_without_labels(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err, heavy = cli("export", "--labels", str(empty), "--format", "coco", "--out", str(tmp_path / "l.json"))
    assert "no pseudo-labels in" in one_error(code, out, err)
    assert not (tmp_path / "l.json").exists() and heavy == []
    code, out, err, _ = cli("export", "--labels", str(empty), "--format", "voc", "--out", str(tmp_path / "vocdir"))
    assert "no pseudo-labels in" in one_error(code, out, err)
    assert not (tmp_path / "vocdir").exists()  # no empty folders left behind


def test_a_dataset_root_that_does_not_exist_leaves_no_output(tmp_path: Path) -> None:
    output = tmp_path / "out"
    code, out, err, heavy = cli("run", "--set", f"dataset.root={tmp_path / 'nowhere'}", "--set", f"output={output}")
    assert "does not exist" in one_error(code, out, err)
    assert not output.exists() and heavy == []


def test_a_mistyped_key_gets_a_suggestion() -> None:
    code, out, err, _ = cli("run", "--set", "walk.bta=3")
    assert one_error(code, out, err) == "error: unknown config key walk.bta (did you mean walk.beta?)"


def test_an_unreachable_object_store_fails_with_one_line(tmp_path: Path) -> None:
    """No endpoint and no network to AWS (or none to a bucket that is not there): one line, at once."""
    code, out, err, heavy = cli(
        "run",
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        "--set",
        "output=s3://nobucket/x",
        "--set",
        "storage.connect_timeout_s=2",
        "--set",
        "storage.endpoint_url=http://127.0.0.1:9",  # the discard port: nothing listens
    )
    assert "unreachable" in one_error(code, out, err) and heavy == []


def test_no_endpoint_and_no_way_to_aws_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """`output=s3://nobucket/x` with no endpoint: a probe of AWS's S3 host, not the SDK's DNS retries."""
    from ray_wsis import storage
    from ray_wsis.config import StorageConfig

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    probed: list[tuple[str, int]] = []

    def no_route(host: str, port: int, timeout_s: float) -> str:
        probed.append((host, port))
        return "Name or service not known"

    monkeypatch.setattr(storage, "_connects", no_route)
    with pytest.raises(storage.StorageError, match="cannot reach S3 for s3://nobucket/x"):
        storage.check_endpoint(StorageConfig(region="eu-west-1"), "s3://nobucket/x")
    assert probed == [("s3.eu-west-1.amazonaws.com", 443)]


def test_a_name_that_does_not_resolve_is_reported_within_the_timeout() -> None:
    import time

    from ray_wsis.storage import _connects

    start = time.monotonic()
    assert _connects("nobucket.invalid", 443, 1.0) is not None  # .invalid never resolves (RFC 2606)
    assert time.monotonic() - start < 3.0
