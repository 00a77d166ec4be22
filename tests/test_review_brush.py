"""The review loop's pieces without a server: the brush RLE codec (against Label Studio's own),
regions to and from our labels, the uncertainty scores, the latest submission, the reviewed split."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ray_wsis.data.records import GroundTruth, ImageRecord
from ray_wsis.data.reviewed import REVIEW_SPLIT, HumanLabel, ReviewedSource, decode_human_row, human_label_row
from ray_wsis.review import brush_rle
from ray_wsis.review.brush import decode_result, label_config, label_names, prediction_result, regions
from ray_wsis.review.client import LabelStudio, ReviewError
from ray_wsis.review.pull import latest_submission
from ray_wsis.review.uncertainty import SCORES, image_uncertainty
from ray_wsis.storage import resolve
from tests.label_studio_server import EXECUTABLE, free_port, require_label_studio

CLASSES = ("cat", "dog", "bird")


def masks_to_test(rng: np.random.Generator) -> list[np.ndarray]:
    big = np.zeros((375, 500), bool)
    big[50:150, 60:250] = True
    big[0, :] = True
    return [
        np.ones((1, 1), bool),
        np.zeros((2, 3), bool),
        rng.random((7, 9)) > 0.5,
        big,
        np.ones((300, 300), bool),  # 360,000 values: runs longer than one chunk holds (2**16)
    ]


def test_brush_rle_round_trip():
    for mask in masks_to_test(np.random.default_rng(0)):
        assert np.array_equal(brush_rle.decode(brush_rle.encode(mask), *mask.shape), mask)


def test_brush_rle_reads_literal_chunks():
    """Label Studio's editor also writes literal chunks (flag 0): built bit by bit here."""
    values = [9, 8, 7, 255, 6, 5, 4, 0]  # two RGBA pixels: the first drawn (alpha 255), the second not
    bits = f"{len(values):032b}" + f"{8 - 1:05b}" + "".join(f"{b - 1:04b}" for b in (3, 4, 8, 16))
    bits += "0" + "00" + f"{len(values) - 1:03b}" + "".join(f"{v:08b}" for v in values)
    bits += "0" * (-len(bits) % 8)
    data = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert brush_rle.decode_values(data).tolist() == values
    assert brush_rle.decode(data, 1, 2).tolist() == [[True, False]]
    with pytest.raises(ValueError, match="ends inside"):
        brush_rle.decode_values(data[:-2])
    with pytest.raises(ValueError, match="RGBA bitmap"):
        brush_rle.decode(data, 2, 2)


def test_brush_rle_agrees_with_label_studio_sdk(tmp_path: Path):
    """Our bytes decode with the SDK's codec and the SDK's bytes with ours (run in Label Studio's env)."""
    require_label_studio()
    masks = masks_to_test(np.random.default_rng(1))
    ours = [brush_rle.encode(m) for m in masks]
    script = tmp_path / "sdk.py"
    script.write_text(
        "import json, sys\n"
        "import numpy as np\n"
        "from label_studio_sdk.converter.brush import decode_rle, mask2rle\n"
        "cases = json.load(open(sys.argv[1]))\n"
        "out = []\n"
        "for case in cases:\n"
        "    h, w = case['shape']\n"
        "    decoded = decode_rle(case['ours']).reshape(h, w, 4)[:, :, 3] > 127\n"
        "    mask = np.asarray(case['mask'], np.uint8).reshape(h, w)\n"
        "    out.append({'decoded': decoded.ravel().astype(int).tolist(), 'theirs': mask2rle(mask * 255)})\n"
        "json.dump(out, open(sys.argv[2], 'w'))\n"
    )
    cases = [{"shape": list(m.shape), "ours": o, "mask": m.ravel().astype(int).tolist()} for m, o in zip(masks, ours)]
    (tmp_path / "in.json").write_text(json.dumps(cases))
    python = EXECUTABLE.parent / "python"
    subprocess.run([str(python), str(script), str(tmp_path / "in.json"), str(tmp_path / "out.json")], check=True)
    answers = json.loads((tmp_path / "out.json").read_text())
    for mask, answer in zip(masks, answers):
        assert np.array_equal(np.asarray(answer["decoded"], bool).reshape(mask.shape), mask)
        assert np.array_equal(brush_rle.decode(answer["theirs"], *mask.shape), mask)


def labels_with_instances() -> tuple[np.ndarray, np.ndarray, list[int]]:
    semantic = np.zeros((20, 30), np.uint8)
    semantic[2:8, 2:10] = 1  # two cats side by side, one instance each
    semantic[2:8, 12:20] = 1
    semantic[12:18, 5:25] = 2  # a dog whose instance covers only part of it
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:8, 2:10] = True
    masks[1, 2:8, 12:20] = True
    masks[2, 12:18, 5:15] = True
    return semantic, masks, [1, 1, 2]


def test_regions_add_up_to_the_semantic_mask_and_come_back_as_instances():
    semantic, masks, classes = labels_with_instances()
    parts = regions(semantic, masks, classes)
    assert [c for c, _ in parts] == [1, 1, 2, 2]  # the dog's uncovered pixels are a region of their own
    result = prediction_result(parts, CLASSES)
    assert {r["value"]["brushlabels"][0] for r in result} == {"cat", "dog"}
    back = decode_result(json.loads(json.dumps(result)), CLASSES, 20, 30)
    assert np.array_equal(back.semantic, semantic)
    assert back.class_ids.tolist() == [1, 1, 2, 2]
    assert np.array_equal(back.masks[0], masks[0]) and np.array_equal(back.masks[1], masks[1])


def test_decode_result_refuses_what_it_cannot_read():
    semantic, masks, classes = labels_with_instances()
    result = prediction_result(regions(semantic, masks, classes), CLASSES)
    wrong_label = json.loads(json.dumps(result))
    wrong_label[0]["value"]["brushlabels"] = ["horse"]
    with pytest.raises(ReviewError, match="not one of the dataset's classes"):
        decode_result(wrong_label, CLASSES, 20, 30)
    with pytest.raises(ReviewError, match="30x20 px, the image 31x20"):
        decode_result(result, CLASSES, 20, 31)
    assert decode_result([], CLASSES, 20, 30).semantic.max() == 0  # nothing drawn: all background


def test_label_config_names_every_class_once():
    names = ("cat", 'say "hi" & <bye>')
    assert label_names(label_config(names)) == set(names)
    assert label_names("<View><Labels name='x'><Label value='a'/></Labels></View>") == set()  # not brush labels


def test_uncertainty_scores():
    sure = np.full((10, 10), 255, np.uint8)
    semantic = np.zeros((10, 10), np.uint8)
    semantic[2:5, 2:5] = 1
    for name in SCORES:
        assert image_uncertainty(sure, semantic, name) == 0.0
    rim = sure.copy()
    rim[1:6, 1:6] = 0  # an unsure square (25 of 100 pixels) around the object
    small, large = semantic.copy(), np.ones((10, 10), np.uint8)
    assert image_uncertainty(rim, small) == 0.25  # the default, low-share: the share of unsure pixels
    assert image_uncertainty(rim, small, "mean") == image_uncertainty(rim, large, "mean") == 0.25
    # the same doubt weighs more on a small object than on a large one (relative)
    assert image_uncertainty(rim, small, "relative") > image_uncertainty(rim, large, "relative") > 0
    half = sure.copy()
    half[1:6, 1:6] = 128  # halfway from flipping: doubtful, but not under a quarter
    assert image_uncertainty(half, small) == 0.0 < image_uncertainty(half, small, "mean")


def test_latest_submission_skips_cancelled_and_takes_the_newest():
    task = {
        "annotations": [
            {"id": 3, "was_cancelled": False, "updated_at": "2026-01-01T10:00:00Z"},
            {"id": 5, "was_cancelled": True, "updated_at": "2026-01-03T10:00:00Z"},
            {"id": 4, "was_cancelled": False, "updated_at": "2026-01-02T10:00:00Z"},
        ]
    }
    assert latest_submission(task)["id"] == 4
    assert latest_submission({"annotations": []}) is None


class _Inner:
    class_names = CLASSES

    def records(self, split):
        return [ImageRecord(f"im{i}", f"/x/im{i}.jpg", (1,)) for i in range(4)]

    def has_ground_truth(self, split):
        return False

    def ground_truth(self, image_id):
        return GroundTruth(np.zeros((20, 30), np.uint8))


def test_reviewed_source_serves_the_human_masks_as_a_split(tmp_path: Path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_wsis.data.reviewed import HUMAN_LABELS

    semantic, masks, classes = labels_with_instances()
    origin = {"project_id": 1, "task_id": 2, "annotation_id": 3, "updated_at": "t"}
    row = human_label_row("im1", HumanLabel(semantic, masks, np.asarray(classes)), origin)
    again = human_label_row("im1", HumanLabel(semantic, masks, np.asarray(classes)), origin)
    assert row["digest"] == again["digest"]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row], schema=HUMAN_LABELS), buffer)
    (tmp_path / "human.parquet").write_bytes(buffer.getvalue())
    source = ReviewedSource(_Inner(), resolve(str(tmp_path / "human.parquet")), "train", frozenset({"im1", "gone"}))
    records, invalid = source.scan(REVIEW_SPLIT)
    assert [r.image_id for r in records] == ["im1"] and invalid == [("gone", "reviewed, but not in split 'train'")]
    assert source.has_ground_truth(REVIEW_SPLIT) and not source.has_ground_truth("train")
    truth = source.ground_truth("im1")
    assert np.array_equal(truth.semantic, semantic) and truth.instance_masks.shape == (3, 20, 30)
    assert source.ground_truth("im2").semantic.max() == 0  # not reviewed: the dataset's own
    decoded = decode_human_row(row)
    assert decoded.class_ids.tolist() == classes


def test_client_errors_are_one_line():
    closed = free_port()
    with pytest.raises(ReviewError, match="cannot be reached"):
        LabelStudio(f"http://127.0.0.1:{closed}", "key").whoami()
    with pytest.raises(ReviewError, match="no API key: set LABEL_STUDIO_API_KEY"):
        LabelStudio("http://127.0.0.1:1", "")
    with pytest.raises(ReviewError, match="not an http"):
        LabelStudio("localhost:8080", "key")
