"""Downstream training: DeepLabV3 / Mask R-CNN on pseudo-label shards through Ray Data + Ray Train.

Pseudo-labels are written straight from the tiny VOC ground truth (no pipeline run), with a
zero-score fragment per image to check that targets drop it. Models are the ResNet-18
variants at 64x80 so each TorchTrainer run takes a few steps.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch

from ray_wsis.config import ConfigError, load_config
from ray_wsis.data.sources import build_source
from ray_wsis.downstream.batches import instance_batch, semantic_batch
from ray_wsis.downstream.data import detection_inputs
from ray_wsis.downstream.demo import comparison_table, demo_config
from ray_wsis.downstream.evaluate import coco_mask_ap
from ray_wsis.downstream.models import ModelSpec, build, load_model, model_bytes
from ray_wsis.labels import PseudoLabelDataset, read_pseudo_labels
from ray_wsis.masks import encode_rles
from ray_wsis.models.checkpoints import CheckpointError
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.output_config import save_output_config
from ray_wsis.pipeline.schema import PSEUDO_LABELS, pseudo_label_row, rows_to_table
from ray_wsis.pipeline.sink import commit, split_rows
from tests.pipeline_helpers import make_tiny_voc, start_local_ray, tiny_config

DOWNSTREAM = [
    "downstream.backbone=resnet18",
    "downstream.crop_size=64",
    "downstream.batch_size=2",
    "downstream.epochs=1",
    "downstream.max_eval_images=2",
    "ray.cpus_per_worker=0.5",
]


def write_pseudo_labels(config, n: int = 4) -> list[str]:
    """Two shards of GT-derived pseudo-labels; each image gets an extra zero-score fragment."""
    source = build_source(config.dataset, config.storage)
    rows = []
    for record in source.records("train")[:n]:
        gt = source.ground_truth(record.image_id)
        semantic = np.where(gt.semantic == 255, 0, gt.semantic).astype(np.uint8)
        fragment = np.zeros((1, *semantic.shape), bool)
        fragment[0, :3, :3] = True
        masks = np.concatenate([gt.instance_masks, fragment])
        class_ids = np.concatenate([gt.instance_class_ids, [record.class_ids[0]]])
        scores = np.concatenate([np.full(len(gt.instance_class_ids), 0.9), [0.0]])
        rows.append(
            pseudo_label_row(
                record.image_id,
                *semantic.shape,
                record.class_ids,
                semantic,
                np.full_like(semantic, 255),
                masks,
                class_ids,
                scores,
            )
        )
    location = Layout.of(config).pseudo_labels
    for part in (rows[: n // 2], rows[n // 2 :]):
        good, _ = split_rows(rows_to_table(part, PSEUDO_LABELS), "make-pseudo-labels", PSEUDO_LABELS)
        commit(location, good, retries=0)
    return [r["image_id"] for r in rows]


# --------------------------------------------------------------------------- no Ray
def _decoded_row(rng: np.random.Generator, h: int = 40, w: int = 50) -> dict:
    masks = np.zeros((3, h, w), bool)
    masks[0, 5:20, 5:25] = True
    masks[1, 22:38, 30:48] = True
    masks[2, 0:2, 0:2] = True
    return {
        "image_id": "a",
        "image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        "semantic": np.where(masks[0], 1, 0).astype(np.uint8),
        "masks": masks,
        "boxes": np.asarray([[5, 5, 25, 20], [30, 22, 48, 38], [0, 0, 2, 2]], np.float32),
        "labels": np.asarray([1, 2, 3]),
        "category_ids": np.asarray([1, 2, 3]),
        "scores": np.asarray([0.9, 0.3, 0.0], np.float32),
    }


def _batch(rows: list[dict]) -> dict:
    """Rows -> a columnar batch with object columns, as Ray Data hands ragged columns over."""
    out = {key: np.empty(len(rows), dtype=object) for key in rows[0]}
    for i, row in enumerate(rows):
        for key, value in row.items():
            out[key][i] = value
    return out


def test_semantic_batch_crops_to_fixed_size():
    rng = np.random.default_rng(0)
    out = semantic_batch(_batch([_decoded_row(rng), _decoded_row(rng)]), crop_size=64, rescale=(0.5, 2.0))
    assert out["image"].shape == (2, 3, 64, 64) and out["image"].dtype == np.float32
    assert out["label"].shape == (2, 64, 64)
    assert set(np.unique(out["label"])) <= {0, 1, 255}


def test_instance_targets_drop_weak_instances_and_survive_the_byte_columns():
    rng = np.random.default_rng(1)
    out = instance_batch(_batch([_decoded_row(rng)]), crop_size=64, min_score=0.5)
    images, targets = detection_inputs(out, torch.device("cpu"))
    h, w = images[0].shape[1:]
    assert min(h, w) == 64 and float(images[0].max()) <= 1.0
    target = targets[0]
    assert target["labels"].tolist() == [1]  # 0.3 < min_score, 0.0 always dropped
    assert target["masks"].shape == (1, h, w) and target["masks"].dtype == torch.uint8
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    ys, xs = np.nonzero(target["masks"][0].numpy())
    assert abs(x1 - xs.min()) <= 2 and abs(x2 - xs.max() - 1) <= 2 and abs(y1 - ys.min()) <= 2
    assert abs(y2 - ys.max() - 1) <= 2
    empty = instance_batch(_batch([_decoded_row(rng)]), crop_size=64, min_score=2.0)
    assert detection_inputs(empty, torch.device("cpu"))[1][0]["boxes"].shape == (0, 4)


def test_model_files_are_weights_only_and_checked():
    spec = ModelSpec("deeplab", "resnet18", 5, 64)
    data = model_bytes(build(spec), spec, {"epochs": 1})
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert payload["kind"] == "deeplab" and payload["num_classes"] == 5
    model, _ = load_model(data, "deeplab")
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 80))["out"].shape == (1, 5, 64, 80)
    with pytest.raises(CheckpointError, match="expected maskrcnn"):
        load_model(data, "maskrcnn")


def test_coco_mask_ap_with_pycocotools():
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 2:12, 2:14] = True
    masks[1, 15:28, 20:38] = True
    rles = [{"size": r["size"], "counts": r["counts"]} for r in encode_rles(masks)]
    gt = [{"category_id": 1, "rle": rles[0]}, {"category_id": 2, "rle": rles[1]}]
    perfect = [{"category_id": 1, "score": 0.9, "rle": rles[0]}, {"category_id": 2, "score": 0.8, "rle": rles[1]}]
    record = {"height": 30, "width": 40, "gt": gt}
    assert coco_mask_ap([{**record, "dt": perfect}], 3) == {
        "coco_ap": pytest.approx(100.0),
        "coco_ap50": pytest.approx(100.0),
    }
    assert coco_mask_ap([{**record, "dt": perfect[:1]}], 3)["coco_ap"] == pytest.approx(50.0)
    assert coco_mask_ap([{**record, "dt": []}], 3) == {"coco_ap": 0.0, "coco_ap50": 0.0}
    assert coco_mask_ap([{**record, "gt": [], "dt": perfect}], 3) == {"coco_ap": None, "coco_ap50": None}


def test_downstream_config_fields():
    config = load_config(None, ["downstream.rescale=[0.75, 1.25]", "downstream.epochs=7"])
    assert config.downstream.rescale == (0.75, 1.25)
    with pytest.raises(ConfigError, match="downstream.rescale"):
        load_config(None, ["downstream.rescale=[2.0, 1.0]"])
    demo = demo_config(config)
    assert demo.downstream.epochs == 7 and demo.downstream.crop_size == 128  # explicit values win
    table = comparison_table(
        {"sem_miou": 50.0, "ins_map50": 20.0, "images": {"split": "train"}},
        {"split": "val", "miou": 40.0, "train": {"epochs": 3, "backbone": "resnet18"}},
        {"split": "val", "map50": 10.0, "coco_ap": 5.0},
    )
    assert "semantic mIoU" in table and "50.0" in table and "40.0" in table and "5.0" in table


def test_reader_dataset_from_local_disk(tmp_path):
    config = tiny_config(make_tiny_voc(tmp_path / "voc"), str(tmp_path / "out"))
    ids = write_pseudo_labels(config)
    dataset = PseudoLabelDataset(str(tmp_path / "out"), min_score=0.5)
    assert sorted(dataset[i]["image_id"] for i in range(len(dataset))) == sorted(ids)
    sample = dataset[0]
    assert sample["masks"].dtype == bool and sample["masks"].shape[1:] == sample["semantic"].shape
    assert (sample["scores"] >= 0.5).all() and sample["boxes"].shape == (len(sample["category_ids"]), 4)


def test_too_few_images_for_a_batch_is_a_config_error(tmp_path):
    from ray_wsis.downstream.train import train_downstream

    config = tiny_config(make_tiny_voc(tmp_path / "voc"), str(tmp_path / "out"), "downstream.batch_size=8")
    write_pseudo_labels(config)
    with pytest.raises(ConfigError, match="too few"):
        train_downstream(config, "semantic", log=lambda _m: None)


# --------------------------------------------------------------------------- Ray Data + Ray Train
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    data = make_tiny_voc(root / "voc")
    output = str(root / "out")
    write_pseudo_labels(tiny_config(data, output))
    save_output_config(tiny_config(data, output))  # as a run does: commands then need no --config
    start_local_ray()  # TEST_RAY_CPUS, as every module gets
    return data, output


def _metrics_file(output: str, task: str) -> dict:
    with open(os.path.join(output, f"downstream_{task}_metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_read_pseudo_labels_streams_images_and_masks(labelled):
    data, output = labelled
    config = tiny_config(data, output)
    rows = read_pseudo_labels(output, min_score=0.5, with_images=True, dataset_config=config).take_all()
    assert len(rows) == 4
    for row in rows:
        assert row["image"].shape[:2] == row["semantic"].shape == row["masks"].shape[1:]
        assert (np.asarray(row["scores"]) >= 0.5).all()


@pytest.mark.slow
def test_deeplab_trains_checkpoints_and_resumes(labelled):
    from ray_wsis.downstream.train import train_downstream

    data, output = labelled
    quiet = lambda _m: None  # noqa: E731
    first = train_downstream(tiny_config(data, output, *DOWNSTREAM, "downstream.eval_split="), "semantic", log=quiet)
    assert first["train"]["start_epoch"] == 0 and first["train"]["epochs"] == 1 and "miou" not in first
    assert os.path.isdir(os.path.join(output, "checkpoints", "tiny-deeplab", "epoch_000"))
    assert os.path.exists(os.path.join(output, "stages", "train-downstream-semantic.json"))
    again = train_downstream(tiny_config(data, output, *DOWNSTREAM, "downstream.eval_split="), "semantic", log=quiet)
    assert again == first  # finished: a no-op

    more = tiny_config(data, output, *DOWNSTREAM, "downstream.epochs=2")
    resumed = train_downstream(more, "semantic", log=quiet)
    assert resumed["train"]["start_epoch"] == 1 and resumed["train"]["epochs"] == 2
    assert resumed["train"]["global_step"] == 2 * first["train"]["global_step"]
    assert os.path.isdir(os.path.join(output, "checkpoints", "tiny-deeplab", "epoch_001"))
    metrics = _metrics_file(output, "semantic")
    assert metrics["split"] == "val" and metrics["images"] == 2 and 0.0 <= metrics["miou"] <= 100.0
    with open(os.path.join(output, "models", "deeplab.pt"), "rb") as f:
        payload = torch.load(f, map_location="cpu", weights_only=True)
    assert payload["meta"]["epochs"] == 2 and payload["num_classes"] == 21

    # the output's own config.yaml stands in for --config; the same settings find the finished run
    from ray_wsis.cli import main

    sets = [arg for item in (*DOWNSTREAM, "downstream.epochs=2") for arg in ("--set", item)]
    assert main(["train-downstream", "--labels", output, "--task", "semantic", *sets]) == 0

    # another backbone is not a continuation: the stage is redone from scratch
    from ray_wsis.downstream.train import STAGES
    from ray_wsis.pipeline.context import StageContext
    from ray_wsis.stages.base import RunOptions, plan_stage

    other = tiny_config(data, output, *DOWNSTREAM, "downstream.epochs=3", "downstream.backbone=resnet34")
    plan = plan_stage(StageContext(other), STAGES["semantic"], RunOptions())
    assert plan.action == "redo" and "downstream.backbone" in plan.why


@pytest.mark.slow
def test_maskrcnn_trains_and_reports_voc_and_coco_ap(labelled):
    from ray_wsis.downstream.train import train_downstream

    data, output = labelled
    result = train_downstream(tiny_config(data, output, *DOWNSTREAM), "instance", log=lambda _m: None)
    assert os.path.isdir(os.path.join(output, "checkpoints", "tiny-maskrcnn", "epoch_000"))
    metrics = _metrics_file(output, "instance")
    assert metrics == json.loads(json.dumps(result))
    for key in ("map25", "map50", "map70", "map75"):
        assert 0.0 <= metrics[key] <= 100.0
    assert 0.0 <= metrics["coco_ap"] <= 100.0 and 0.0 <= metrics["coco_ap50"] <= 100.0
    assert metrics["images"] == 2 and metrics["train"]["images"] == 4
    with open(os.path.join(output, "models", "maskrcnn.pt"), "rb") as f:
        model, _ = load_model(f.read(), "maskrcnn")
    with torch.no_grad():
        assert set(model.eval()([torch.rand(3, 64, 80)])[0]) >= {"boxes", "labels", "scores", "masks"}


def test_uncertain_pixels_are_ignored_by_the_deeplab_loss():
    """downstream.ignore_uncertain: low-confidence pixels become 255, which the loss leaves out."""
    from ray_wsis.downstream.batches import uncertain_as_ignore
    from ray_wsis.downstream.train import semantic_step

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    semantic = np.zeros((32, 32), np.uint8)
    semantic[8:24, 8:24] = 3
    confidence = np.full((32, 32), 200, np.uint8)
    confidence[:, :10] = 5  # a band close to the threshold
    batch = semantic_batch(
        {"image": [image, image], "semantic": [semantic, semantic], "confidence": [confidence, confidence]},
        crop_size=32,
        rescale=(1.0, 1.0),
        min_confidence=0.1,
    )
    ignored = batch["label"] == 255
    assert ignored.sum() == 2 * 32 * 10 and not (uncertain_as_ignore(semantic, confidence, 0.0) == 255).any()
    assert (semantic_batch({"image": [image], "semantic": [semantic]}, 32, (1.0, 1.0))["label"] != 255).all()

    torch.manual_seed(0)
    logits = torch.randn(2, 21, 32, 32, requires_grad=True)
    model = lambda _x: {"out": logits}  # noqa: E731
    labels = torch.from_numpy(batch["label"]).long()
    loss = semantic_step(model, (torch.from_numpy(batch["image"]), labels))["loss"]
    kept = labels != 255
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[kept], labels[kept])
    assert torch.isclose(loss, expected)
    loss.backward()
    assert logits.grad is not None and logits.grad.permute(0, 2, 3, 1)[~kept].abs().max() == 0
