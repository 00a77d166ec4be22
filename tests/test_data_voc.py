"""VOCSource on a tiny VOC tree made here, locally and through an S3 server."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ray_wsis.classes import VOC_CLASSES, voc_palette
from ray_wsis.config import StorageConfig
from ray_wsis.data.records import DatasetError
from ray_wsis.data.voc import VOCSource, parse_split_line
from tests.s3_server import moto_endpoint, s3_env, upload_tree  # noqa: F401

CAT, DOG, PERSON = (VOC_CLASSES.index(n) + 1 for n in ("cat", "dog", "person"))


def xml(*objects: tuple[str, int]) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult></object>" for name, difficult in objects
    )
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8)).convert("P")
    img.putpalette(voc_palette())
    img.save(path)


def make_tree(root: Path) -> Path:
    """Three images: cat+dog (one difficult), person only, no object at all; one bad XML."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = ["2007_000032", "2007_000033", "2008_000001", "2008_000002"]
    for image_id in ids:
        Image.new("RGB", (8, 6), (10, 20, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "Annotations" / "2007_000032.xml").write_text(xml(("dog", 0), ("cat", 1), ("dog", 0)))
    (root / "Annotations" / "2007_000033.xml").write_text(xml(("person", 0)))
    (root / "Annotations" / "2008_000001.xml").write_text(xml())
    (root / "Annotations" / "2008_000002.xml").write_text(xml(("zebra", 0)))
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000033\n\n  2007_000032  \n2008_000001\n2008_000002\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n")
    (root / "ImageSets/Segmentation/empty.txt").write_text("\n  \n")
    semantic = np.zeros((6, 8), np.uint8)
    semantic[1:5, 0:3] = CAT
    semantic[1:5, 4:8] = DOG
    semantic[1:5, 3] = 255
    semantic[0, 0] = 255
    instances = np.zeros((6, 8), np.uint8)
    instances[1:5, 0:3] = 1
    instances[1:5, 4:8] = 2
    instances[1:5, 3] = 255
    instances[0, 0] = 255
    instances[5, 2] = 1  # a stray pixel over background: instance 1 is still a cat by majority
    save_png(root / "SegmentationClass" / "2007_000032.png", semantic)
    save_png(root / "SegmentationObject" / "2007_000032.png", instances)
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "VOC2012")


def test_records_and_string_ids(voc_root):
    source = VOCSource(str(voc_root))
    assert source.class_names == VOC_CLASSES
    records, invalid = source.scan("train")
    assert [r.image_id for r in records] == ["2007_000032", "2007_000033", "2008_000001"]
    assert records[0].class_ids == (CAT, DOG)  # unique, sorted, difficult objects included
    assert records[1].class_ids == (PERSON,)
    assert records[2].class_ids == ()  # valid, the pipeline decides to skip it
    assert records[0].uri == str(voc_root / "JPEGImages" / "2007_000032.jpg")
    assert Path(records[0].uri).exists()
    assert source.records("train") == records
    assert len(invalid) == 1 and invalid[0][0] == "2008_000002"
    assert "zebra" in invalid[0][1] and "2008_000002.xml" in invalid[0][1]
    assert source.invalid_records("train") == invalid


def test_pickles(voc_root):
    source = VOCSource(str(voc_root), segmentation_class_dir="SegmentationClass")
    assert pickle.loads(pickle.dumps(source)) == source


def test_missing_root_empty_split_missing_split(tmp_path, voc_root):
    with pytest.raises(DatasetError, match="does not exist"):
        VOCSource(str(tmp_path / "nope")).records("train")
    with pytest.raises(DatasetError, match="split 'empty' is empty"):
        VOCSource(str(voc_root)).records("empty")
    with pytest.raises(DatasetError, match=r"ImageSets/Segmentation/test\.txt"):
        VOCSource(str(voc_root)).records("test")


def test_missing_and_malformed_xml_are_per_image(voc_root):
    (voc_root / "Annotations" / "2007_000033.xml").write_text("<annotation><object>")
    (voc_root / "Annotations" / "2008_000001.xml").unlink()
    records, invalid = VOCSource(str(voc_root)).scan("train")
    assert [r.image_id for r in records] == ["2007_000032"]
    reasons = dict(invalid)
    assert "malformed XML" in reasons["2007_000033"]
    assert "2008_000001.xml" in reasons["2008_000001"]


def test_split_fallbacks_and_sbd_lines(voc_root):
    (voc_root / "ImageSets" / "Main").mkdir()
    (voc_root / "ImageSets/Main/trainval.txt").write_text("2007_000033\n")
    (voc_root / "train_aug.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
        "/JPEGImages/2007_000033.jpg /SegmentationClassAug/2007_000033.png\n\n"
    )
    source = VOCSource(str(voc_root))
    assert [r.image_id for r in source.records("trainval")] == ["2007_000033"]
    assert [r.image_id for r in source.records("train_aug")] == ["2007_000032", "2007_000033"]
    assert parse_split_line("2007_000032 -1") == "2007_000032"
    assert parse_split_line("   ") is None


def test_labels_from_png_without_annotations(voc_root):
    import shutil

    shutil.rmtree(voc_root / "Annotations")
    (voc_root / "SegmentationClass").rename(voc_root / "SegmentationClassAug")
    gray = np.zeros((6, 8), np.uint8)
    gray[2:4, 2:4] = PERSON
    gray[0] = 255
    Image.fromarray(gray).save(voc_root / "SegmentationClassAug" / "2007_000033.png")  # SBD: mode L
    source = VOCSource(str(voc_root), segmentation_class_dir="SegmentationClassAug")
    records, invalid = source.scan("train")
    assert {r.image_id: r.class_ids for r in records} == {"2007_000032": (CAT, DOG), "2007_000033": (PERSON,)}
    assert sorted(i for i, _ in invalid) == ["2008_000001", "2008_000002"]
    assert source.has_ground_truth("train")
    assert not VOCSource(str(voc_root)).has_ground_truth("train")


def test_ground_truth(voc_root):
    source = VOCSource(str(voc_root))
    assert source.has_ground_truth("val")
    gt = source.ground_truth("2007_000032")
    assert gt.semantic.dtype == np.uint8 and gt.semantic.shape == (6, 8)
    assert set(np.unique(gt.semantic).tolist()) == {0, CAT, DOG, 255}  # raw indices, void kept
    assert gt.instance_masks.shape == (2, 6, 8) and gt.instance_masks.dtype == bool
    assert gt.instance_class_ids.tolist() == [CAT, DOG]
    assert gt.instance_masks[0].sum() == 13 and gt.instance_masks[1].sum() == 16
    assert source.ground_truth("2007_000033") is None


def test_ground_truth_without_instances(voc_root):
    (voc_root / "SegmentationObject" / "2007_000032.png").unlink()
    gt = VOCSource(str(voc_root)).ground_truth("2007_000032")
    assert gt.semantic is not None and gt.instance_masks is None


def test_same_answers_through_s3(voc_root, s3_env):
    upload_tree(voc_root, "bucket", "voc", s3_env)
    local = VOCSource(str(voc_root))
    remote = VOCSource("s3://bucket/voc", StorageConfig(endpoint_url=s3_env))
    records, invalid = remote.scan("train")
    local_records, local_invalid = local.scan("train")
    assert [(r.image_id, r.class_ids) for r in records] == [(r.image_id, r.class_ids) for r in local_records]
    assert records[0].uri == "s3://bucket/voc/JPEGImages/2007_000032.jpg"
    assert [i for i, _ in invalid] == [i for i, _ in local_invalid]
    assert remote.has_ground_truth("train")
    gt, local_gt = remote.ground_truth("2007_000032"), local.ground_truth("2007_000032")
    np.testing.assert_array_equal(gt.semantic, local_gt.semantic)
    np.testing.assert_array_equal(gt.instance_masks, local_gt.instance_masks)
    assert remote.ground_truth("2007_000033") is None
    with pytest.raises(DatasetError, match="does not exist"):
        VOCSource("s3://bucket/missing", StorageConfig(endpoint_url=s3_env)).records("train")
    assert pickle.loads(pickle.dumps(remote)).records("val")[0].image_id == "2007_000032"
