"""ManifestSource (CSV, JSONL, Parquet), its errors, S3 images, and build_source / load_image."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_wsis.classes import voc_palette
from ray_wsis.config import DatasetConfig, StorageConfig
from ray_wsis.data.coco import COCOSource
from ray_wsis.data.decode import ImageDecodeError
from ray_wsis.data.manifest import ManifestSource, read_class_names, uri_problem
from ray_wsis.data.records import DatasetError, ImageRecord
from ray_wsis.data.sources import build_source, load_image
from ray_wsis.data.voc import VOCSource
from ray_wsis.storage import read_bytes, resolve
from tests.s3_server import moto_endpoint, s3_env, upload_tree  # noqa: F401

CLASSES = "# my classes\nbackground\ncat\ndog  # good boy\n\nbird\n"


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (6 + i, 4), (i * 40, 10, 20)).save(folder / name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_images(tmp_path / "images", ["a.jpg", "b.jpg", "c.jpg", "d.png"])
    (tmp_path / "classes.txt").write_text(CLASSES)
    return tmp_path


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


ROWS = [
    {"image_uri": "images/a.jpg", "labels": "cat|dog", "split": "train"},
    {"image_uri": "images/b.jpg", "labels": '["bird"]', "split": "val"},
    {"image_uri": "images/c.jpg", "labels": "", "split": ""},
    {"image_uri": "images/d.png", "labels": "dog | cat", "split": "train", "image_id": "dee"},
]


def test_class_names_file(data_dir):
    assert read_class_names(str(data_dir / "classes.txt"), StorageConfig()) == ("cat", "dog", "bird")
    (data_dir / "dup.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DatasetError, match="lines 1 and 3"):
        read_class_names(str(data_dir / "dup.txt"), StorageConfig())
    with pytest.raises(DatasetError, match="does not exist"):
        ManifestSource(str(data_dir / "m.csv"), str(data_dir / "nope.txt"))


def test_csv_manifest(data_dir):
    source = ManifestSource(str(write_csv(data_dir / "m.csv", ROWS)), str(data_dir / "classes.txt"))
    assert source.class_names == ("cat", "dog", "bird")
    train = source.records("train")
    assert [(r.image_id, r.class_ids) for r in train] == [("a", (1, 2)), ("c", ()), ("dee", (1, 2))]
    assert train[0].uri == str(data_dir / "images" / "a.jpg")  # relative to the manifest's folder
    assert [r.image_id for r in source.records("val")] == ["b"]
    assert [r.image_id for r in source.records("all")] == ["a", "b", "c", "dee"]
    with pytest.raises(DatasetError, match="split 'test' is empty"):
        source.records("test")
    assert not source.has_ground_truth("train")
    assert source.validate("all") == []
    clone = pickle.loads(pickle.dumps(source))
    assert clone.records("train") == train and clone.class_names == source.class_names


def test_root_is_the_base_of_relative_uris(data_dir, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    manifest = write_csv(tmp_path / "elsewhere" / "m.csv", ROWS[:1])
    source = ManifestSource(str(manifest), str(data_dir / "classes.txt"), root=str(data_dir))
    assert source.records("train")[0].uri == str(data_dir / "images" / "a.jpg")


def test_jsonl_and_parquet_manifests(data_dir):
    rows = [
        {"image_uri": str(data_dir / "images" / "a.jpg"), "labels": ["cat", "bird"]},
        {"image_uri": "images/b.jpg", "labels": []},
    ]
    jsonl = data_dir / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    parquet = data_dir / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for manifest in (jsonl, parquet):
        source = ManifestSource(str(manifest), str(data_dir / "classes.txt"))
        records = source.records("train")  # no split column: every row is in train
        assert [(r.image_id, r.class_ids) for r in records] == [("a", (1, 3)), ("b", ())]
        assert records[1].uri == str(data_dir / "images" / "b.jpg")
        assert source.records("all") == records


def test_unknown_class_name_reports_its_row(data_dir):
    rows = ROWS[:2] + [
        {"image_uri": "images/c.jpg", "labels": "cat|zebra", "split": "train"},
        {"image_uri": "images/d.png", "labels": "cat,dog", "split": "train"},
    ]
    source = ManifestSource(str(write_csv(data_dir / "m.csv", rows)), str(data_dir / "classes.txt"))
    records, invalid = source.scan("train")
    assert [r.image_id for r in records] == ["a"]
    reasons = dict(invalid)
    assert "row 3" in reasons["c"] and "'zebra'" in reasons["c"]
    assert "row 4" in reasons["d"] and "separate labels with '|'" in reasons["d"]
    jsonl = data_dir / "m.jsonl"
    jsonl.write_text(json.dumps({"image_uri": "images/a.jpg", "labels": [3]}) + "\n")
    _, invalid = ManifestSource(str(jsonl), str(data_dir / "classes.txt")).scan("all")
    assert "row 1" in invalid[0][1] and "class names" in invalid[0][1]


@pytest.mark.parametrize("bad", ["s3://", "s3://bucket", "http//x/y.jpg", "s3:/bucket/x.jpg", "", "images/"])
def test_malformed_uri_fails_the_manifest(data_dir, bad):
    rows = ROWS[:2] + [{"image_uri": bad, "labels": "cat", "split": "train"}]
    source = ManifestSource(str(write_csv(data_dir / "m.csv", rows)), str(data_dir / "classes.txt"))
    with pytest.raises(DatasetError, match="row 3 image_uri"):
        source.records("val")


def test_uri_problem_accepts_good_uris():
    for good in (
        "s3://bucket/key.jpg",
        "/abs/x.jpg",
        "rel/x.jpg",
        "file:///x.jpg",
        "gs://b/k.png",
        "https://host/x.jpg",
        "images//x.jpg",
    ):
        assert uri_problem(good) is None, good


def test_duplicate_ids_fail_with_rows(data_dir):
    write_images(data_dir / "other", ["a.jpg"])
    rows = ROWS + [{"image_uri": "other/a.jpg", "labels": "cat", "split": "val"}]
    source = ManifestSource(str(write_csv(data_dir / "m.csv", rows)), str(data_dir / "classes.txt"))
    with pytest.raises(DatasetError, match=r"duplicate image ids.*'a' in rows 1, 5"):
        source.records("train")


def test_validate_reports_missing_images_by_row(data_dir):
    rows = ROWS + [{"image_uri": "images/missing.jpg", "labels": "cat", "split": "val"}]
    source = ManifestSource(str(write_csv(data_dir / "m.csv", rows)), str(data_dir / "classes.txt"))
    assert [r.image_id for r in source.records("val")] == ["b", "missing"]  # records() checks no file
    problems = source.validate("val", check_files=True)
    assert len(problems) == 1 and problems[0][0] == "missing"
    assert "row 5" in problems[0][1] and "does not exist" in problems[0][1]
    assert source.validate("val", check_files=False) == []
    with pytest.raises(ImageDecodeError, match="missing file"):
        load_image(source.records("val")[1], StorageConfig())
    assert load_image(source.records("val")[0], StorageConfig()).shape == (4, 7, 3)


def test_ground_truth_columns(data_dir):
    semantic = np.zeros((4, 6), np.uint8)
    semantic[1:3, 1:3] = 2
    semantic[0, :] = 255
    instances = (semantic == 2).astype(np.uint8)
    for name, array in (("a_sem.png", semantic), ("a_ins.png", instances)):
        img = Image.fromarray(array).convert("P")
        img.putpalette(voc_palette())
        img.save(data_dir / name)
    rows = [
        {"image_uri": "images/a.jpg", "labels": "dog", "semantic_uri": "a_sem.png", "instance_uri": "a_ins.png"},
        {"image_uri": "images/b.jpg", "labels": "cat", "semantic_uri": "", "instance_uri": ""},
    ]
    source = ManifestSource(str(write_csv(data_dir / "m.csv", rows)), str(data_dir / "classes.txt"))
    assert source.has_ground_truth("train")
    gt = source.ground_truth("a")
    np.testing.assert_array_equal(gt.semantic, semantic)
    assert gt.instance_class_ids.tolist() == [2] and gt.instance_masks.sum() == 4
    assert source.ground_truth("b") is None and source.ground_truth("zzz") is None


def test_images_on_s3(data_dir, s3_env):
    upload_tree(data_dir / "images", "manifest-bucket", "imgs", s3_env)
    storage = StorageConfig(endpoint_url=s3_env)
    rows = [
        {"image_uri": "s3://manifest-bucket/imgs/a.jpg", "labels": "cat"},
        {"image_uri": "imgs/b.jpg", "labels": "dog"},
    ]
    jsonl = data_dir / "s3.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    upload_tree(data_dir, "manifest-bucket", "meta", s3_env)  # the manifest and classes on S3 too
    source = ManifestSource(
        "s3://manifest-bucket/meta/s3.jsonl",
        "s3://manifest-bucket/meta/classes.txt",
        root="s3://manifest-bucket",
        storage=storage,
    )
    records = source.records("train")
    assert [r.uri for r in records] == ["s3://manifest-bucket/imgs/a.jpg", "s3://manifest-bucket/imgs/b.jpg"]
    assert read_bytes(resolve(records[0].uri, storage)) == (data_dir / "images" / "a.jpg").read_bytes()
    assert load_image(records[1], storage).shape == (4, 7, 3)
    assert source.validate("train") == []
    gone = ImageRecord("x", "s3://manifest-bucket/imgs/none.jpg", ())
    with pytest.raises(ImageDecodeError, match="missing file"):
        load_image(gone, storage)


def test_build_source(data_dir, tmp_path):
    storage = StorageConfig()
    with pytest.raises(DatasetError, match="dataset.root is empty"):
        build_source(DatasetConfig(format="voc"), storage)
    with pytest.raises(DatasetError, match="does not exist"):
        build_source(DatasetConfig(format="voc", root=str(tmp_path / "nope")), storage)
    assert isinstance(build_source(DatasetConfig(format="voc", root=str(tmp_path)), storage), VOCSource)
    with pytest.raises(DatasetError, match="dataset.coco_annotations is empty"):
        build_source(DatasetConfig(format="coco", root=str(tmp_path)), storage)
    coco = build_source(DatasetConfig(format="coco", root=str(tmp_path), coco_annotations="a/{split}.json"), storage)
    assert isinstance(coco, COCOSource)
    with pytest.raises(DatasetError, match="dataset.manifest is empty"):
        build_source(DatasetConfig(format="manifest"), storage)
    with pytest.raises(DatasetError, match="dataset.manifest .* does not exist"):
        build_source(
            DatasetConfig(
                format="manifest", manifest=str(tmp_path / "m.csv"), class_names_file=str(data_dir / "classes.txt")
            ),
            storage,
        )
    manifest = write_csv(data_dir / "m.csv", ROWS)
    source = build_source(
        DatasetConfig(format="manifest", manifest=str(manifest), class_names_file=str(data_dir / "classes.txt")),
        storage,
    )
    assert isinstance(source, ManifestSource) and len(source.records("all")) == 4
