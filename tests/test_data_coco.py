"""COCOSource on a tiny COCO-format dataset made here."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ray_wsis.data.coco import COCOSource, annotation_mask
from ray_wsis.data.records import DatasetError

H, W = 20, 24
PERSON, CAR, DOG = 1, 2, 3  # class ids from category ids 1, 3, 18


def rle_of(mask: np.ndarray, compressed: bool = True) -> dict:
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.astype(np.uint8).ravel(order="F")  # uncompressed RLE: run lengths, column-major, from 0s
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def make_coco(root: Path) -> Path:
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    train_images = [
        {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W},
        {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": H, "width": W},
        {"id": 30, "file_name": "COCO_train2014_000000000030.jpg", "height": H, "width": W},
        {"id": 31, "file_name": "COCO_train2014_000000000031.jpg", "height": H, "width": W},
    ]
    annotations = [
        # a big person as a polygon (x, y pairs) covering columns 2..14, rows 2..16
        {
            "id": 1,
            "image_id": 9,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[2, 2, 14, 2, 14, 16, 2, 16]],
            "area": 168,
            "bbox": [2, 2, 12, 14],
        },
        # a small dog on top of it, compressed RLE
        {
            "id": 2,
            "image_id": 9,
            "category_id": 18,
            "iscrowd": 0,
            "segmentation": rle_of(box(5, 9, 5, 9)),
            "area": 16,
            "bbox": [5, 5, 4, 4],
        },
        # a crowd of people, uncompressed RLE, overlapping the dog's corner
        {
            "id": 3,
            "image_id": 9,
            "category_id": 1,
            "iscrowd": 1,
            "segmentation": rle_of(box(8, 12, 8, 22), compressed=False),
            "area": 56,
            "bbox": [8, 8, 14, 4],
        },
        # image 25: only a crowd of dogs
        {
            "id": 4,
            "image_id": 25,
            "category_id": 18,
            "iscrowd": 1,
            "segmentation": rle_of(box(0, 5, 0, 5), compressed=False),
            "area": 25,
            "bbox": [0, 0, 5, 5],
        },
        # image 31: a category that is not declared
        {
            "id": 5,
            "image_id": 31,
            "category_id": 99,
            "iscrowd": 0,
            "segmentation": [[0, 0, 4, 0, 4, 4]],
            "area": 8,
            "bbox": [0, 0, 4, 4],
        },
    ]
    val_images = [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": H, "width": W}]
    val_annotations = [
        {
            "id": 10,
            "image_id": 42,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": [[1, 1, 10, 1, 10, 10, 1, 10]],
            "area": 81,
            "bbox": [1, 1, 9, 9],
        }
    ]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": train_images, "annotations": annotations, "categories": categories})
    )
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": val_images, "annotations": val_annotations, "categories": categories})
    )
    for split, images in (("train2014", train_images), ("val2014", val_images)):
        (root / split).mkdir()
        for image in images:
            Image.new("RGB", (W, H), (50, 60, 70)).save(root / split / image["file_name"])
    return root


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_coco(tmp_path / "coco")


def source_of(root: Path) -> COCOSource:
    return COCOSource(str(root), "annotations/instances_{split}.json")


def test_classes_are_contiguous_by_category_id(coco_root):
    source = source_of(coco_root)
    assert source.class_names == ("person", "car", "dog")  # found by listing annotation files
    assert source.category_ids == (1, 3, 18)


def test_records(coco_root):
    source = source_of(coco_root)
    records, invalid = source.scan("train2014")
    assert [r.image_id for r in records] == [
        "COCO_train2014_000000000009",
        "COCO_train2014_000000000025",
        "COCO_train2014_000000000030",
    ]
    assert [r.class_ids for r in records] == [(PERSON, DOG), (DOG,), ()]  # crowd counts as present
    assert records[0].uri == str(coco_root / "train2014" / "COCO_train2014_000000000009.jpg")
    assert Path(records[0].uri).exists()
    assert invalid[0][0] == "COCO_train2014_000000000031" and "99" in invalid[0][1]
    assert source.coco_image_id("COCO_train2014_000000000025") == 25
    assert source.has_ground_truth("train2014")


def test_ground_truth(coco_root):
    source = source_of(coco_root)
    source.records("train2014")
    gt = source.ground_truth("COCO_train2014_000000000009")
    assert gt.instance_masks.shape == (2, H, W) and gt.instance_class_ids.tolist() == [PERSON, DOG]
    np.testing.assert_array_equal(gt.instance_masks[1], box(5, 9, 5, 9))
    person = gt.instance_masks[0]
    assert person[3, 3] and person[15, 13] and not person[18, 3] and not person[3, 18]
    semantic = gt.semantic
    assert semantic.dtype == np.uint8 and semantic.shape == (H, W)
    assert semantic[6, 6] == DOG  # the small dog stays on top of the big person
    assert semantic[3, 3] == PERSON
    assert semantic[10, 20] == 255  # crowd outside any instance is void
    assert semantic[8, 8] == DOG  # an instance is not hidden by a crowd region
    assert semantic[0, 23] == 0
    crowd_only = source.ground_truth("COCO_train2014_000000000025")
    assert crowd_only.instance_masks.shape == (0, H, W)
    assert (crowd_only.semantic[:5, :5] == 255).all()
    assert source.ground_truth("nope") is None


def test_pickle_drops_cache_but_keeps_splits(coco_root):
    source = source_of(coco_root)
    source.records("train2014")
    clone = pickle.loads(pickle.dumps(source))
    assert clone._cache == {}
    assert clone.ground_truth("COCO_train2014_000000000009").instance_masks.shape[0] == 2
    fresh = source_of(coco_root)
    val_gt = fresh.ground_truth("COCO_val2014_000000000042")  # split spelled in the 2014 name
    assert val_gt.instance_class_ids.tolist() == [CAR]


def test_annotation_mask_forms():
    mask = box(2, 6, 3, 9)
    np.testing.assert_array_equal(annotation_mask(rle_of(mask), H, W), mask)
    np.testing.assert_array_equal(annotation_mask(rle_of(mask, compressed=False), H, W), mask)
    assert annotation_mask([[3, 2, 9, 2, 9, 6, 3, 6]], H, W).sum() > 0


def test_errors(coco_root, tmp_path):
    with pytest.raises(DatasetError, match="instances_test2014.json"):
        source_of(coco_root).records("test2014")
    (coco_root / "annotations" / "instances_bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        source_of(coco_root).records("bad")
    with pytest.raises(DatasetError, match="empty"):
        COCOSource("", "annotations/instances_{split}.json")
    with pytest.raises(DatasetError, match="no COCO annotation file"):
        source_of(tmp_path / "elsewhere").class_names
