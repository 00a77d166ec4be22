"""Context decoupling by copy-paste (train/paste.py): the pasted images and their labels, checked
against brute-force versions on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ray_wsis.config import ConfigError, load_config
from ray_wsis.masks import encode_rle
from ray_wsis.train.batches import ClassifierBatches, rows_to_batch
from ray_wsis.train.paste import PasteObject, composite, cut_object, object_bank, paste_random, transform


def _object(class_id: int = 5, seed: int = 0) -> PasteObject:
    rng = np.random.default_rng(seed)
    mask = np.zeros((5, 8), bool)
    mask[1:4, 2:7] = True
    mask[0, 0] = True
    return PasteObject(class_id, rng.integers(0, 256, (5, 8, 3), dtype=np.uint8), mask)


def test_transform_scales_and_rotates_the_object_and_its_mask_together():
    obj = _object()
    rgb, mask = transform(obj, 1.0, 0.0)
    assert np.array_equal(rgb, obj.rgb) and np.array_equal(mask, obj.mask)
    rgb, mask = transform(obj, 1.0, 90.0)  # counter-clockwise, the canvas grown to hold it
    assert np.array_equal(mask, np.rot90(obj.mask)) and np.array_equal(rgb, np.rot90(obj.rgb))
    _, mask = transform(obj, 2.0, 0.0)
    assert np.array_equal(mask, obj.mask.repeat(2, 0).repeat(2, 1))


@pytest.mark.parametrize("top, left", [(3, 4), (-2, -3), (17, 25), (-10, 0), (0, 40)])
def test_composite_equals_a_pixel_by_pixel_paste(top, left):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    mask = rng.random((7, 9)) < 0.6
    got, placed = composite(image, rgb, mask, top, left)
    expected, where = image.copy(), np.zeros((20, 30), bool)
    for y in range(20):
        for x in range(30):
            oy, ox = y - top, x - left
            if 0 <= oy < 7 and 0 <= ox < 9 and mask[oy, ox]:
                expected[y, x] = rgb[oy, ox]
                where[y, x] = True
    assert np.array_equal(got, expected) and np.array_equal(placed, where)
    assert not np.shares_memory(got, image)


def test_paste_random_adds_an_absent_class_and_only_its_pixels():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    bank = [_object(class_id=3), _object(class_id=5, seed=1)]
    for seed in range(20):
        pasted, ids = paste_random(image, [3], bank, 1.0, np.random.default_rng(seed))
        assert ids == [3, 5]  # class 3 is in the image: only the class-5 object may come
        assert pasted.shape == image.shape and not np.array_equal(pasted, image)
    assert paste_random(image, [3], bank, 0.0, rng)[1] == [3]  # the draw says no
    unchanged, ids = paste_random(image, [3, 5], bank, 1.0, rng)  # nothing absent to paste
    assert ids == [3, 5] and unchanged is image
    assert paste_random(image, [], bank, 1.0, np.random.default_rng(0))[1] in ([3], [5])  # a context-only image


def test_object_bank_cuts_the_confident_instances_out_of_their_images():
    rng = np.random.default_rng(3)
    images = {
        "a": rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
        "b": rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
    }
    big, small, faint = np.zeros((12, 16), bool), np.zeros((12, 16), bool), np.zeros((12, 16), bool)
    big[2:8, 3:10] = True
    small[0:2, 0:2] = True
    faint[5:11, 8:15] = True

    def instance(mask: np.ndarray, class_id: int, score: float) -> dict:
        return {"rle": encode_rle(mask), "category_id": class_id, "score": score, "area": int(mask.sum())}

    rows = [
        {"image_id": "a", "height": 12, "width": 16, "instances": [instance(big, 2, 0.9), instance(small, 4, 0.9)]},
        {"image_id": "b", "height": 12, "width": 16, "instances": [instance(faint, 7, 0.2)]},
        {"image_id": "gone", "height": 12, "width": 16, "instances": [instance(big, 1, 1.0)]},
        {"image_id": "b", "height": 10, "width": 16, "instances": [instance(big, 1, 1.0)]},  # another size
    ]
    bank = object_bank(rows, images.get, min_score=0.5, min_area=16)
    assert [o.class_id for o in bank] == [2]  # small: under 16 px; faint: under the score; the rest unreadable
    assert np.array_equal(bank[0].rgb, images["a"][2:8, 3:10]) and bank[0].mask.all()
    assert cut_object(images["a"], np.zeros((12, 16), bool), 1) is None


def test_classifier_batches_label_what_they_paste(monkeypatch):
    from ray_wsis.train import batches as module

    config = load_config(None, ["cam.crop_size=32", "cam.resize_long=[24,32]", "cam.paste_probability=1.0"])
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    monkeypatch.setattr(module, "_images", lambda batch, cfg: list(enumerate(images)))  # pixels, not files
    rows = [{"image_id": str(i), "uri": "", "class_ids": ids} for i, ids in enumerate([[1], [], [5]])]
    out = ClassifierBatches(config, 20, [_object(class_id=5)])(rows_to_batch(rows))
    assert out["image"].shape == (3, 3, 32, 32)
    assert [np.flatnonzero(t).tolist() for t in out["target"]] == [[0, 4], [4], [4]]  # class 5 is index 4
    plain = ClassifierBatches(config, 20)(rows_to_batch(rows))  # no bank: irn's targets
    assert [np.flatnonzero(t).tolist() for t in plain["target"]] == [[0], [], [4]]


def test_paste_from_must_be_another_output(tmp_path):
    with pytest.raises(ConfigError, match="own output"):
        load_config(None, [f"output={tmp_path}", f"cam.paste_from={tmp_path}/"])
    with pytest.raises(ConfigError, match="cam.paste_probability"):
        load_config(None, ["cam.paste_probability=1.5"])


def test_the_stage_cuts_a_finished_outputs_instances_out_of_the_dataset(tmp_path):
    """train-cam's bank (stages/train_cam.py paste_bank): the first round's shards read back, each
    object cut from the dataset's own image; a first round with nothing to paste is one clear error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_wsis.data.records import DatasetError
    from ray_wsis.pipeline.context import StageContext
    from ray_wsis.stages.base import StageRun
    from ray_wsis.stages.registry import TRAIN_CAM
    from ray_wsis.stages.train_cam import paste_bank
    from tests.pipeline_helpers import make_tiny_voc, tiny_config

    data = make_tiny_voc(tmp_path / "voc")
    first = tmp_path / "first"
    (first / "pseudo_labels").mkdir(parents=True)
    config = tiny_config(data, str(tmp_path / "second"), f"cam.paste_from={first}")
    logs: list[str] = []
    ctx = StageContext(config, log=logs.append)
    records = ctx.split(config.dataset.train_split).records
    image_id = records[0].image_id
    mask = np.zeros((64, 80), bool)
    mask[10:30, 20:50] = True

    def shard(score: float) -> None:
        instance = {
            "rle": encode_rle(mask),
            "category_id": 3,
            "score": score,
            "area": int(mask.sum()),
            "bbox": [20, 10, 30, 20],
        }
        rows = [{"image_id": image_id, "height": 64, "width": 80, "instances": [instance]}]
        pq.write_table(pa.Table.from_pylist(rows), first / "pseudo_labels" / "part-00000.parquet")

    run = StageRun(ctx, TRAIN_CAM, None)  # type: ignore[arg-type]
    shard(0.9)
    bank = paste_bank(run, records)
    assert [(o.class_id, o.mask.shape, bool(o.mask.all())) for o in bank] == [(3, (20, 30), True)]
    from ray_wsis.data.sources import load_image

    assert np.array_equal(bank[0].rgb, load_image(records[0], config.storage)[10:30, 20:50])
    assert logs == [f"[train-cam] pasting objects from {first}: 1 (1 bird)"]
    shard(0.1)  # under cam.paste_min_score
    with pytest.raises(DatasetError, match="no instance scoring at least cam.paste_min_score"):
        paste_bank(run, records)

    # the first round's cut is an input of train-cam: new first-round labels change its input digest
    from ray_wsis.stages.registry import classifier_inputs

    ids = [r.image_id for r in records]
    assert list(classifier_inputs(ctx)) == [*ids, "paste:none"]
    (first / "stages").mkdir()
    (first / "stages" / "cut-labels.json").write_text('{"identity": "abc"}')
    assert list(classifier_inputs(ctx)) == [*ids, "paste:abc"]
    assert list(classifier_inputs(StageContext(tiny_config(data, str(tmp_path / "plain"))))) == ids
