"""The synthetic VOC dataset: layout, ground-truth consistency, touching pairs, determinism, speed; the contexts set."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ray_wsis.classes import VOC_CLASSES, voc_palette
from ray_wsis.data.synthetic import DEFAULT_CLASSES, make_synthetic_voc, synthesize
from ray_wsis.data.synthetic_contexts import CONTEXT_CLASSES, CONTEXT_OF, CONTEXTS, ContextSample, synthesize_contexts
from ray_wsis.data.voc import VOCSource

N_TRAIN, N_VAL = 30, 10
CLASS_IDS = {VOC_CLASSES.index(c) + 1 for c in DEFAULT_CLASSES}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("synthetic") / "VOC"
    start = time.perf_counter()
    make_synthetic_voc(str(root), n_train=N_TRAIN, n_val=N_VAL, seed=3)
    return root, time.perf_counter() - start


def ids_of(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))


def test_fast_enough(synthetic_root):
    _, seconds = synthetic_root
    assert seconds < 10, f"{N_TRAIN + N_VAL} images took {seconds:.1f} s"


def test_layout_and_lists(synthetic_root):
    root, _ = synthetic_root
    ids = ids_of(root)
    assert len(ids) == N_TRAIN + N_VAL and ids[0] == "syn_000001"
    for folder in ("Segmentation", "Main"):
        train = (root / "ImageSets" / folder / "train.txt").read_text().split()
        val = (root / "ImageSets" / folder / "val.txt").read_text().split()
        assert len(train) == N_TRAIN and len(val) == N_VAL and not set(train) & set(val)
        assert sorted(train + val) == ids
    for image_id in ids:
        for sub, ext in (("Annotations", "xml"), ("SegmentationClass", "png"), ("SegmentationObject", "png")):
            assert (root / sub / f"{image_id}.{ext}").is_file()
    image = Image.open(root / "JPEGImages" / f"{ids[0]}.jpg")
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (160, 128)


def test_ground_truth_is_consistent(synthetic_root):
    root, _ = synthetic_root
    palette = voc_palette()
    for image_id in ids_of(root):
        sem_img = Image.open(root / "SegmentationClass" / f"{image_id}.png")
        ins_img = Image.open(root / "SegmentationObject" / f"{image_id}.png")
        assert sem_img.mode == "P" and ins_img.mode == "P"
        assert sem_img.getpalette()[: len(palette)] == palette[: len(sem_img.getpalette())]
        semantic, instance = np.array(sem_img), np.array(ins_img)
        assert semantic.shape == (128, 160)
        values = set(np.unique(semantic).tolist())
        assert values <= {0, 255} | CLASS_IDS
        assert 255 in values  # the void band
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml")
        objects = tree.findall("object")
        names = {VOC_CLASSES.index(o.findtext("name")) + 1 for o in objects}
        assert names == values - {0, 255}, image_id
        assert all(o.findtext("difficult") == "0" for o in objects)
        # instances: ids 1..n, one class each, the semantic map agrees pixel by pixel
        assert set(np.unique(instance).tolist()) - {0, 255} == set(range(1, len(objects) + 1))
        np.testing.assert_array_equal(semantic == 255, instance == 255)
        np.testing.assert_array_equal(semantic == 0, instance == 0)
        for k, obj in enumerate(objects, start=1):
            classes = np.unique(semantic[instance == k])
            assert classes.tolist() == [VOC_CLASSES.index(obj.findtext("name")) + 1]
            ys, xs = np.nonzero(instance == k)
            box = obj.find("bndbox")
            assert int(box.findtext("xmin")) <= xs.min() + 1 and int(box.findtext("xmax")) >= xs.max() + 1
            assert int(box.findtext("ymin")) <= ys.min() + 1 and int(box.findtext("ymax")) >= ys.max() + 1


def test_voc_reader_reads_it(synthetic_root):
    root, _ = synthetic_root
    source = VOCSource(str(root))
    records, invalid = source.scan("train")
    assert len(records) == N_TRAIN and invalid == []
    assert all(r.class_ids and set(r.class_ids) <= CLASS_IDS for r in records)
    gt = source.ground_truth(records[0].image_id)
    assert gt.instance_masks.shape[0] == len(gt.instance_class_ids) >= 1


def test_some_images_have_touching_same_class_instances(synthetic_root):
    root, _ = synthetic_root
    touching = 0
    for image_id in ids_of(root):
        semantic = np.array(Image.open(root / "SegmentationClass" / f"{image_id}.png"))
        instance = np.array(Image.open(root / "SegmentationObject" / f"{image_id}.png"))
        ids = [k for k in np.unique(instance).tolist() if k not in (0, 255)]
        classes = {k: int(np.bincount(semantic[instance == k]).argmax()) for k in ids}
        grown = {k: ndimage.binary_dilation(instance == k, iterations=3) for k in ids}
        if any(
            classes[a] == classes[b] and (grown[a] & grown[b]).any() for i, a in enumerate(ids) for b in ids[i + 1 :]
        ):
            touching += 1
    assert touching >= 3


def test_parts_are_visible_and_small():
    for index in range(20):
        sample = synthesize(np.random.default_rng([7, index]))
        assert sample.objects and sample.image.dtype == np.uint8 and sample.image.shape == (128, 160, 3)
        for k, part in enumerate(sample.part_masks, start=1):
            body = (sample.instance == k) | ((sample.instance == 255) & part)
            assert part.any() and (part <= body).all()  # wholly on the visible object
            assert part.sum() <= 0.45 * body.sum()


def test_deterministic(tmp_path):
    make_synthetic_voc(str(tmp_path / "a"), n_train=3, n_val=1, seed=11)
    make_synthetic_voc(str(tmp_path / "b"), n_train=3, n_val=1, seed=11)
    make_synthetic_voc(str(tmp_path / "c"), n_train=3, n_val=1, seed=12)
    for sub in (
        "SegmentationClass/syn_000002.png",
        "SegmentationObject/syn_000004.png",
        "JPEGImages/syn_000001.jpg",
        "Annotations/syn_000003.xml",
    ):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()
    assert (tmp_path / "a/JPEGImages/syn_000001.jpg").read_bytes() != (
        tmp_path / "c/JPEGImages/syn_000001.jpg"
    ).read_bytes()


def test_other_classes_and_sizes(tmp_path):
    make_synthetic_voc(str(tmp_path / "d"), n_train=4, n_val=0, size=(96, 96), classes=("cat", "dog"), seed=1)
    records = VOCSource(str(tmp_path / "d")).records("train")
    assert all(set(r.class_ids) <= {8, 12} for r in records)
    with pytest.raises(ValueError, match="zebra"):
        make_synthetic_voc(str(tmp_path / "e"), classes=("zebra",))


# ----------------------------------------------------------------------------------------
# The "contexts" set


CONTEXT_IDS = tuple(VOC_CLASSES.index(c) + 1 for c in CONTEXT_CLASSES)


def _context_sample(seed: int, index: int) -> ContextSample:
    rng = np.random.default_rng([seed, 0, index])
    for _ in range(100):
        sample = synthesize_contexts(rng, CONTEXT_IDS)
        if sample is not None:
            return sample
    raise AssertionError("no layout in 100 attempts")


@pytest.fixture(scope="module")
def context_samples() -> list[ContextSample]:
    return [_context_sample(5, index) for index in range(200)]


def test_contexts_deterministic_and_sizes_vary(tmp_path):
    make_synthetic_voc(str(tmp_path / "a"), n_train=3, n_val=1, seed=11, kind="contexts")
    make_synthetic_voc(str(tmp_path / "b"), n_train=3, n_val=1, seed=11, kind="contexts")
    for sub in ("JPEGImages/syn_000001.jpg", "SegmentationClass/syn_000002.png", "Annotations/syn_000004.xml"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()
    sizes = {Image.open(p).size for p in (tmp_path / "a" / "JPEGImages").glob("*.jpg")}
    assert len(sizes) >= 3 and all(96 <= side <= 200 for size in sizes for side in size)
    assert _context_sample(4, 0).image.tobytes() != _context_sample(4, 1).image.tobytes()
    with pytest.raises(ValueError, match="'parts', 'scenes' or 'contexts'"):
        make_synthetic_voc(str(tmp_path / "c"), kind="rooms")
    with pytest.raises(ValueError, match="contexts kind draws only"):
        make_synthetic_voc(str(tmp_path / "c"), classes=("boat",), kind="contexts")


def test_contexts_statistics(context_samples):
    samples = context_samples
    empty = sum(not s.objects for s in samples) / len(samples)
    assert 0.05 <= empty <= 0.15, empty
    for name in CONTEXT_CLASSES:
        class_id, context = VOC_CLASSES.index(name) + 1, CONTEXT_OF[name]
        with_class = [context in s.contexts for s in samples if class_id in s.class_ids]
        without = [context in s.contexts for s in samples if class_id not in s.class_ids]
        assert len(with_class) >= 25, name
        assert np.mean(with_class) >= 0.65 and np.mean(without) <= 0.25, (name, np.mean(with_class), np.mean(without))
    fill: dict[int, list[float]] = {}
    for s in samples:
        for k, obj in enumerate(s.objects, start=1):
            x0, y0, x1, y1 = obj.bbox
            box = s.instance[y0 - 1 : y1, x0 - 1 : x1]
            fill.setdefault(obj.class_id, []).append(float(((box == k) | (box == 255)).mean()))  # an upper bound
    assert min(np.mean(fill[VOC_CLASSES.index(c) + 1]) for c in ("aeroplane", "bicycle")) < 0.35


def test_contexts_ground_truth_and_geometry(context_samples):
    branches = CONTEXTS.index("branches") + 1
    perched = birds = 0
    for s in context_samples:
        assert set(np.unique(s.semantic).tolist()) <= {0, 255, *CONTEXT_IDS}
        np.testing.assert_array_equal(s.semantic == 255, s.instance == 255)
        assert set(np.unique(s.instance).tolist()) - {0, 255} == set(range(1, len(s.objects) + 1))
        assert s.part_masks.shape == (len(s.objects), *s.semantic.shape)
        assert {CONTEXTS[v - 1] for v in np.unique(s.context_map).tolist() if v} <= set(s.contexts)
        for k, obj in enumerate(s.objects, start=1):
            assert (s.instance == k).sum() >= 12 and s.part_masks[k - 1].any()
            if obj.class_id == 3 and "branches" in s.contexts:  # a bird sits on a branch
                birds += 1
                around = ndimage.binary_dilation(s.instance == k, iterations=3)
                perched += bool((around & (s.context_map == branches)).any())
    assert birds >= 10 and perched == birds


def test_context_only_image_is_written_and_read_as_unlabelled(tmp_path):
    index = next(i for i in range(60) if not _context_sample(2, i).objects)
    root = tmp_path / "ctx"
    make_synthetic_voc(str(root), n_train=index + 1, n_val=0, seed=2, kind="contexts")
    image_id = f"syn_{index + 1:06d}"
    assert not np.array(Image.open(root / "SegmentationClass" / f"{image_id}.png")).any()
    assert not np.array(Image.open(root / "SegmentationObject" / f"{image_id}.png")).any()
    tree = ET.parse(root / "Annotations" / f"{image_id}.xml")
    assert tree.findall("object") == [] and tree.findtext("size/width")
    source = VOCSource(str(root))
    records, invalid = source.scan("train")
    assert invalid == [] and len(records) == index + 1
    assert next(r for r in records if r.image_id == image_id).class_ids == ()
    gt = source.ground_truth(image_id)
    assert gt.instance_masks.shape[0] == 0 and not gt.semantic.any()
