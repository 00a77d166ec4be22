"""The pipeline end to end on a tiny synthetic set (local Ray), and what its outputs promise."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_wsis.cli import main as cli_main
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.model_files import digest, fingerprint
from ray_wsis.pipeline.schema import PSEUDO_LABELS
from ray_wsis.pipeline.sink import committed_ids
from ray_wsis.stages.calibrate import AGREEMENT
from ray_wsis.storage import read_bytes, resolve
from tests.pipeline_helpers import (
    assert_default_instance_choice,
    make_tiny_voc,
    markers,
    run_stages,
    start_local_ray,
    tiny_config,
)

pytestmark = pytest.mark.slow

IMAGES = 9
"""Images of the shared run: the tiny set's 8 and one without classes (NO_CLASS_IMAGE)."""


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    """One full `run` (conftest.py's, shared with other modules) and its stage results."""
    start_local_ray()
    return tiny_run


def test_every_stage_ran_and_counts_add_up(finished_run):
    config, results = finished_run
    for stage in ("make-cams", "make-ir-labels", "make-pseudo-labels"):
        s = results[stage]
        assert s["input"] == s["processed"] + s["kept"] + s["skipped"] + s["failed"]
        assert s["unaccounted"] == 0
        assert s["processed"] > 0
    assert results["train-cam"]["images"] == IMAGES  # the image without classes trains as a negative
    for stage, parts in (
        ("make-cams", {"model", "actor", "decode", "write"}),
        ("make-pseudo-labels", {"walk", "post"}),
    ):
        timing = results[stage]["timing"]  # where the time went, in the stage's marker too
        assert parts <= set(timing["seconds"]) and timing["images"] == IMAGES, timing
        assert 1 <= timing["images_per_forward"] <= 2 and 0 < timing["forward_share"] <= 1  # 2 rows a batch
    assert markers(config)["make-cams"]["summary"]["timing"] == results["make-cams"]["timing"]
    assert results["cut-labels"]["images"] == IMAGES and results["cut-labels"]["cut"] == results["cut-labels"]["shards"]
    for name in (
        "models/cam.pt",
        "models/irnet.pt",
        "metrics.json",
        "stages/evaluate.json",
        "calibration.json",
        "config.yaml",
    ):
        assert os.path.exists(os.path.join(config.output, name)), name


def test_pseudo_label_schema_with_plain_pyarrow(finished_run):
    config, _ = finished_run
    folder = os.path.join(config.output, "pseudo_labels")
    files = sorted(f for f in os.listdir(folder) if f.startswith("part-"))
    assert files and all(f.endswith(".parquet") for f in files)
    table = pa.concat_tables([pq.read_table(os.path.join(folder, f)) for f in files])
    assert table.schema.remove_metadata().equals(PSEUDO_LABELS)
    fields = {f.name: f.type for f in table.schema}
    assert fields["image_id"] == pa.string() and fields["height"] == pa.int32()
    assert fields["labels"] == pa.list_(pa.int16()) and fields["semantic"] == pa.binary()
    inst = fields["instances"].value_type
    assert [f.name for f in inst] == ["category_id", "score", "rle", "bbox", "area"]
    meta = pq.read_schema(os.path.join(folder, files[0])).metadata
    assert b"ray_wsis.config_hash" in meta and b"ray_wsis.checkpoint.irnet" in meta and b"ray_wsis.version" in meta
    assert meta[b"ray_wsis.checkpoint.irnet"] != b""
    for kind in ("cam", "irnet"):  # the id in the metadata is the model file's, from its fingerprint
        model = resolve(os.path.join(config.output, "models", f"{kind}.pt"))
        assert fingerprint(model) is not None
        assert meta[f"ray_wsis.checkpoint.{kind}".encode()].decode() == digest(read_bytes(model))
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == IMAGES
    row = table.slice(0, 1).to_pylist()[0]
    semantic = np.asarray(Image.open(__import__("io").BytesIO(row["semantic"])))
    assert semantic.shape == (row["height"], row["width"])
    assert set(np.unique(semantic)) <= {0, *row["labels"]}
    from pycocotools import mask as mask_utils

    for inst in row["instances"]:
        rle = {"size": inst["rle"]["size"], "counts": inst["rle"]["counts"].encode()}
        assert mask_utils.decode(rle).shape == (row["height"], row["width"])
        assert int(mask_utils.area(rle)) == inst["area"]
        assert inst["category_id"] in row["labels"]


def test_metrics_file_has_the_contract_keys(finished_run):
    config, _ = finished_run
    metrics = json.load(open(os.path.join(config.output, "metrics.json")))
    for key in ("cam_miou", "ir_label_precision", "sem_miou", "ins_map25", "ins_map50", "ins_map70", "ins_map75"):
        assert key in metrics
        assert metrics[key] is None or 0.0 <= metrics[key] <= 100.0
    assert metrics["images"]["semantic"] == IMAGES
    assert len(metrics["per_class"]["sem_iou"]) == 21
    sweep = metrics["sem_miou_by_threshold"]
    assert len(sweep) == len(config.calibration.candidates) and set(metrics["ins_map50_by_threshold"]) == set(sweep)
    assert metrics["calibrated"]["mode"] == "label-free" and metrics["oracle"]["semantic"]["value"] == max(
        sweep.values()
    )
    calibration = json.load(open(os.path.join(config.output, "calibration.json")))
    assert_default_instance_choice(calibration)
    # the sweep (from the scores) and the shipped labels, which list images in other orders, score
    # the same cut alike: the oracle can never lose to the calibrated labels
    chosen = {k: f"{metrics['calibrated'][k]['default']:.2f}" for k in ("semantic", "instance")}
    assert metrics["sem_miou"] == pytest.approx(sweep[chosen["semantic"]], abs=1e-9)
    at = metrics["ins_map50_by_threshold"]
    assert metrics["ins_map50"] is not None and metrics["ins_map50"] == pytest.approx(at[chosen["instance"]], abs=1e-9)
    assert metrics["ins_map50_at_reference"] == pytest.approx(at["0.25"], abs=1e-9)


def test_rerun_is_a_noop(rerun):
    config = rerun
    logs: list[str] = []
    again = run_stages(config, log=logs.append)
    assert sum("done, nothing changed" in line for line in logs) == 8, logs
    assert {name: s.get("action") for name, s in again.items() if isinstance(s, dict)} == {
        name: "skip" for name in again if name != "seconds"
    }
    assert again["make-pseudo-labels"]["kept"] == IMAGES and again["make-pseudo-labels"]["processed"] == 0


def test_an_image_without_classes_goes_through_every_stage(finished_run):
    """A background-only image (an XML without objects): trained on as a negative, its relation
    labels all background, and shipped as an all-background label, certain everywhere."""
    from ray_wsis.masks import decode_label_png
    from ray_wsis.pipeline.sink import read_table
    from tests.pipeline_helpers import NO_CLASS_IMAGE

    config, results = finished_run
    layout = StageContext(config).layout

    def row(location):
        rows = [r for r in read_table(location).to_pylist() if r["image_id"] == NO_CLASS_IMAGE]
        assert len(rows) == 1, location.uri
        return rows[0]

    assert row(layout.cams)["labels"] == [] and row(layout.cams)["cam"] == b""
    assert not decode_label_png(row(layout.ir_labels)["ir_label"]).any()  # all background, nothing ignored
    shipped = row(layout.pseudo_labels)
    assert (shipped["labels"], shipped["instances"], shipped["source"]) == ([], [], "model")
    assert not decode_label_png(shipped["semantic"]).any()
    assert (decode_label_png(shipped["confidence"]) == 255).all()
    for stage in ("make-cams", "make-ir-labels", "make-pseudo-labels"):
        assert results[stage]["skipped"] == 0 and results[stage]["failed"] == 0


def test_export_coco_opens_in_pycocotools(finished_run, tmp_path):
    from pycocotools.coco import COCO

    config, _ = finished_run
    out = tmp_path / "coco.json"
    assert cli_main(["export", "--labels", config.output, "--format", "coco", "--out", str(out)]) == 0
    coco = COCO(str(out))
    assert len(coco.getImgIds()) == IMAGES
    assert sorted(coco.getCatIds()) == list(range(1, 21))
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(ann).sum() == ann["area"]
        assert 0.0 <= ann["score"] <= 1.0


def test_export_voc_writes_palette_pngs(finished_run, tmp_path):
    config, _ = finished_run
    assert cli_main(["export", "--labels", config.output, "--format", "voc", "--out", str(tmp_path)]) == 0
    for sub in ("SegmentationClass", "SegmentationObject"):
        files = os.listdir(tmp_path / sub)
        assert len(files) == IMAGES
        img = Image.open(tmp_path / sub / files[0])
        assert img.mode == "P" and img.getpalette()[3:6] == [128, 0, 0]


def test_reader_api_plain_and_ray(finished_run):
    from ray_wsis.labels import PseudoLabelDataset, iter_pseudo_labels, read_pseudo_labels

    config, _ = finished_run
    rows = list(iter_pseudo_labels(config.output))
    assert len(rows) == IMAGES
    dataset = PseudoLabelDataset(config.output)
    sample = dataset[3]
    assert sample["semantic"].dtype == np.uint8 and sample["masks"].dtype == bool
    assert sample["boxes"].shape == (len(sample["category_ids"]), 4)
    assert sample["confidence"].dtype == np.uint8 and sample["confidence"].shape == sample["semantic"].shape
    ds = read_pseudo_labels(config.output, min_score=0.0, with_images=True, dataset_config=config)
    batch = ds.take_batch(8)
    assert len(batch["image_id"]) == 8
    assert batch["image"][0].shape[:2] == batch["semantic"][0].shape == batch["confidence"][0].shape


def test_stored_scores_recut_to_exactly_the_shipped_labels(finished_run):
    """Every label row equals the cut of its scores row at the thresholds its shard records."""
    import pyarrow.parquet as pq

    from ray_wsis.masks import decode_label_png
    from ray_wsis.method.scores import Thresholds, cut_labels
    from ray_wsis.pipeline.schema import THRESHOLDS_KEY, at_original_size, walk_scores
    from ray_wsis.stages.cut_labels import CUT_KEY

    config, _ = finished_run
    folder = os.path.join(config.output, "pseudo_labels")
    compared = 0
    for name in sorted(os.listdir(folder)):
        labels = pq.read_table(os.path.join(folder, name))
        recorded = json.loads(labels.schema.metadata[THRESHOLDS_KEY.encode()])
        assert recorded["source"] == "calibration"
        assert labels.schema.metadata[CUT_KEY.encode()].decode() == markers(config)["cut-labels"]["identity"]
        scores = {r["image_id"]: r for r in pq.read_table(os.path.join(config.output, "scores", name)).to_pylist()}
        sem, ins = Thresholds.from_dict(recorded["semantic"]), Thresholds.from_dict(recorded["instance"])
        for row in labels.to_pylist():
            cut, found = cut_labels(walk_scores(scores[row["image_id"]]), sem, ins, config.walk.min_fragment_fraction)
            semantic, confidence, _ = at_original_size(
                cut.label, cut.confidence, found.masks, row["height"], row["width"]
            )
            assert np.array_equal(decode_label_png(row["semantic"]), semantic)
            assert np.array_equal(decode_label_png(row["confidence"]), confidence)
            assert [i["score"] for i in row["instances"]] == pytest.approx(found.scores.tolist())
            compared += 1
    assert compared == IMAGES


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--force", "nosuchstage"], "nosuchstage is not a stage"),
        (["train-irn"], "models/cam.pt is missing: run train-cam first"),
        (["make-pseudo-labels"], "is missing: run train-irn first"),
        (["status", "/nonexistent/run"], "holds no config.yaml"),
    ],
)
def test_known_mistakes_are_one_error_line(tmp_path, capsys, args, message):
    data = make_tiny_voc(tmp_path / "voc", n_train=2, n_val=0)
    settings = [
        "--set",
        f"dataset.root={data}",
        "--set",
        f"output={tmp_path / 'out'}",
        "--set",
        "irn.backbone_init=classifier",
    ]
    code = cli_main([*args, *([] if args[0] == "status" else settings)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_cli_reports_unknown_key_and_missing_root(tmp_path, capsys):
    assert cli_main(["run", "--set", "cam.nope=1"]) == 2
    assert "cam.nope" in capsys.readouterr().err
    code = cli_main(["make-cams", "--set", f"dataset.root={tmp_path}/missing", "--set", f"output={tmp_path}/o"])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


# -- re-runs of the finished run: each gets it as the fixture made it and puts it back after itself ----


@pytest.fixture
def rerun(finished_run, tmp_path):
    """The finished run's config; its output and dataset are restored after the test, which may
    change both (new settings, new images, a calibration split), so every test starts from the same
    run whatever ran before it."""
    config, _ = finished_run
    keep = tmp_path / "pristine"
    places = ((Path(config.output), keep / "out"), (Path(config.dataset.root), keep / "voc"))
    for place, copy in places:
        shutil.copytree(place, copy)
    yield config
    for place, copy in places:
        shutil.rmtree(place)
        shutil.copytree(copy, place)


def _finished_at(config) -> dict[str, str]:
    return {name: m["finished_at"] + m["identity"] for name, m in markers(config).items()}


def _rerun_with(config, *settings: str):
    """Run again with ``settings``: (the new config, the stages that ran again, the log, results);
    every image is still labelled exactly once."""
    before = _finished_at(config)
    changed = tiny_config(config.dataset.root, config.output, *settings)
    logs: list[str] = []
    results = run_stages(changed, log=logs.append)
    after = _finished_at(changed)
    ids = committed_ids(StageContext(changed).layout.pseudo_labels)
    assert len(ids) == len(set(ids)) == IMAGES
    return changed, {name for name in after if after[name] != before.get(name)}, logs, results


def test_few_shot_calibration_on_a_labelled_split_recalibrates_without_the_walk(rerun):
    config = rerun
    split_dir = Path(config.dataset.root) / "ImageSets" / "Segmentation"
    train = (split_dir / "train.txt").read_text().split()
    (split_dir / "calib.txt").write_text("\n".join(train[:4]) + "\n")
    _, rerun, logs, _ = _rerun_with(config, "dataset.calibration_split=calib")
    assert rerun == {"calibrate", "cut-labels", "evaluate"}, logs
    calibration = json.load(open(os.path.join(config.output, "calibration.json")))
    assert calibration["mode"] == "few-shot" and calibration["images"] == 4
    assert "neighbouring candidates" in calibration["semantic"]["criterion"]
    assert calibration["semantic"]["threshold"]["default"] in calibration["candidates"]
    metrics = json.load(open(os.path.join(config.output, "metrics.json")))
    assert metrics["calibrated"]["mode"] == "few-shot" and metrics["images"]["semantic"] == IMAGES - 4  # the others


def test_the_semantic_agreement_instance_criterion_recalibrates_without_the_walk(rerun):
    config = rerun
    _, rerun, logs, _ = _rerun_with(config, "calibration.instance_criterion=semantic-agreement")
    assert rerun == {"calibrate", "cut-labels", "evaluate"}, logs
    calibration = json.load(open(os.path.join(config.output, "calibration.json")))
    assert calibration["instance"]["criterion"].startswith("mIoU of the united instances")
    assert calibration["instance"]["threshold"]["default"] in calibration["candidates"]


def test_the_relation_agreement_semantic_criterion_recalibrates_without_the_walk(rerun):
    """The semantic threshold whose cut agrees best with the relation labels, checked by a brute-force
    recount of that agreement from the stored scores and relation labels."""
    from ray_wsis.eval.semantic import confusion_matrix, mean_iou
    from ray_wsis.masks import decode_label_png
    from ray_wsis.method.calibration import ImageCut
    from ray_wsis.pipeline.schema import walk_scores
    from ray_wsis.pipeline.sink import read_table
    from ray_wsis.stages.calibrate import RELATION_AGREEMENT

    config = rerun
    changed, rerun, logs, _ = _rerun_with(config, "calibration.semantic_criterion=relation-agreement")
    assert rerun == {"calibrate", "cut-labels", "evaluate"}, logs
    calibration = json.load(open(os.path.join(config.output, "calibration.json")))
    semantic = calibration["semantic"]
    assert semantic["criterion"] == RELATION_AGREEMENT and "otsu" in semantic
    layout = StageContext(changed).layout
    relation = {r["image_id"]: decode_label_png(r["ir_label"]) for r in read_table(layout.ir_labels).to_pylist()}
    candidates = calibration["candidates"]
    confusions = np.zeros((len(candidates), 21, 21), np.int64)
    images = 0
    for row in read_table(layout.scores).to_pylist():
        cut = ImageCut.of(walk_scores(row))
        if len(cut.scores.class_ids) == 0:
            continue  # nothing to cut: the image without classes
        images += 1
        for k, t in enumerate(candidates):
            confusions[k] += confusion_matrix(cut.semantic_label(t), relation[row["image_id"]], 21)
    assert semantic["relation_images"] == images == IMAGES - 1
    expected = [100.0 * mean_iou(c) for c in confusions]
    assert list(semantic["values"].values()) == pytest.approx(expected)
    best = [t for t, v in zip(candidates, expected) if v >= max(expected) - 1e-12]
    assert semantic["threshold"]["default"] == best[len(best) // 2]


def test_the_expected_iou_instance_criterion_recalibrates_without_the_walk(rerun):
    config = rerun
    _, rerun, logs, _ = _rerun_with(config, "calibration.instance_criterion=expected-iou")
    assert rerun == {"calibrate", "cut-labels", "evaluate"}, logs
    calibration = json.load(open(os.path.join(config.output, "calibration.json")))
    # how many instance channels the walk keeps depends on the tiny training; with none there is
    # nothing to read the relation labels under, and agreement chooses, saying why
    scores = os.path.join(config.output, "scores")
    channels = sum(
        len(classes)
        for f in os.listdir(scores)
        if f.endswith(".parquet")
        for classes in pq.read_table(os.path.join(scores, f), columns=["instance_classes"]).column(0).to_pylist()
    )
    criterion = calibration["instance"]["criterion"]
    values = calibration["instance"]["values"]
    if channels == 0:
        assert criterion.startswith("no relation-labelled pixel") and criterion.endswith(AGREEMENT), criterion
        assert all(0.0 <= v <= 100.0 for v in values.values())  # agreement: mIoU in percent
    else:
        assert "relation labels" in criterion, criterion
        assert len(calibration["instance"]["probability"]) == 100
        # every instance channel with foreground chance counts once
        assert 0 <= calibration["instance"]["instances"] <= channels
        assert all(0.0 <= v <= 1.0 for v in values.values())  # expected IoU, a fraction
    assert set(values) == set(map(str, calibration["candidates"]))
    assert calibration["instance"]["threshold"]["default"] in calibration["candidates"]


def test_expected_iou_says_why_it_cannot_apply(finished_run, tmp_path):
    from ray_wsis.stages.calibrate import _instance_by_relation_labels

    config, _ = finished_run
    candidates = [0.3, 0.5]
    affinity = StageContext(tiny_config(config.dataset.root, config.output, "method=affinitynet"))
    assert "needs IRNet" in _instance_by_relation_labels(affinity, candidates)
    elsewhere = StageContext(tiny_config(config.dataset.root, str(tmp_path)))
    assert _instance_by_relation_labels(elsewhere, candidates).startswith("no relation labels under")


def _walk_beta(config) -> float:
    """The walk.beta the finished run's labels were made with."""
    return float(markers(config)["make-pseudo-labels"]["fields"]["walk.beta"])


def test_a_walk_change_reruns_only_the_walk_and_what_follows(rerun):
    config = rerun
    before = _walk_beta(config)
    beta = 8.0 if before != 8.0 else 9.0
    _, rerun, logs, results = _rerun_with(config, f"walk.beta={beta}")
    assert rerun == {"make-pseudo-labels", "calibrate", "cut-labels", "evaluate"}, logs
    assert any(f"make-pseudo-labels: redo, walk.beta: {before} -> {beta}" in line for line in logs), logs
    assert results["train-cam"]["action"] == "skip" and results["make-pseudo-labels"]["action"] == "redo"


def _stored_scores(config) -> dict:
    import pyarrow.parquet as pq

    from ray_wsis.pipeline.schema import walk_scores

    folder = os.path.join(config.output, "scores")
    return {
        row["image_id"]: walk_scores(row)
        for name in sorted(os.listdir(folder))
        for row in pq.read_table(os.path.join(folder, name)).to_pylist()
    }


def test_the_walk_in_the_model_actor_stores_the_scores_the_tasks_store(rerun):
    """walk.runs_in=actor (what auto does on a GPU): the actors walk the CAMs (walk_many) and hand the
    walked maps on in float16; the stored scores are the CPU tasks' own, up to one uint8 level."""
    config = rerun
    before = _stored_scores(config)
    _, rerun, logs, results = _rerun_with(config, "walk.runs_in=actor")
    assert rerun == {"make-pseudo-labels", "calibrate", "cut-labels", "evaluate"}, logs
    timing = markers(config)["make-pseudo-labels"]["summary"]["timing"]
    assert timing["seconds"]["actor_walk"] > 0 and timing["images"] == IMAGES  # the actors walked
    after = _stored_scores(config)
    assert set(after) == set(before) and len(after) == IMAGES
    walked = 0
    for image_id, old in before.items():
        new = after[image_id]
        assert new.class_ids.tolist() == old.class_ids.tolist() and new.semantic.shape == old.semantic.shape
        assert np.abs(new.semantic.astype(int) - old.semantic.astype(int)).max(initial=0) <= 1, image_id
        walked += int(old.semantic.size > 0)
    assert walked == IMAGES - 1  # all but the image without classes
    assert results["make-pseudo-labels"]["action"] == "redo"


def _store_pattern_relation_labels(layout) -> None:
    """Relation labels of a known pattern in place of the tiny run's (which may train to anything):
    background on the left third, unlabelled in the middle, class 15 (no fixture image shows it) on
    the right. calibrate and cut-labels read them as they are stored."""
    from ray_wsis.masks import decode_label_png, encode_label_png

    for shard in Path(layout.ir_labels.path).glob("*.parquet"):
        table = pq.read_table(shard)
        pngs = []
        for png in table.column("ir_label").to_pylist():
            h, w = decode_label_png(png).shape
            pattern = np.full((h, w), 255, np.uint8)
            pattern[:, : w // 3], pattern[:, 2 * w // 3 :] = 0, 15
            pngs.append(encode_label_png(pattern))
        index = table.schema.get_field_index("ir_label")
        pq.write_table(table.set_column(index, table.schema.field(index), pa.array(pngs, pa.binary())), shard)


def _store_walked_left_half(layout, ids: set[str]) -> None:
    """Walked scores of a known pattern for ``ids``: the first class at its peak on the left half
    of the image, nothing elsewhere. calibrate, cut-labels and evaluate read them as stored."""
    for shard in Path(layout.scores.path).glob("*.parquet"):
        table = pq.read_table(shard)
        rows = table.to_pylist()
        for row in rows:
            if row["image_id"] in ids and row["labels"]:
                shape = (len(row["labels"]), row["score_height"], row["score_width"])
                walked = np.zeros(shape, np.uint8)
                walked[0, :, : shape[2] // 2] = 255
                row["semantic_scores"] = walked.tobytes()
        index = table.schema.get_field_index("semantic_scores")
        column = pa.array([r["semantic_scores"] for r in rows], pa.binary())
        pq.write_table(table.set_column(index, table.schema.field(index), column), shard)


def test_kept_relation_labels_recut_only_and_ship_the_confident_pixels(rerun):
    """walk.keep_relation_labels: no network and no walk re-run; every shipped label equals the
    relation labels where they are confident and the walk's cut in their unlabelled band."""
    from ray_wsis.masks import decode_label_png
    from ray_wsis.pipeline.sink import read_table

    config = rerun
    layout = StageContext(config).layout

    def shipped() -> dict[str, np.ndarray]:
        return {r["image_id"]: decode_label_png(r["semantic"]) for r in read_table(layout.pseudo_labels).to_pylist()}

    _store_pattern_relation_labels(layout)
    relation = {r["image_id"]: decode_label_png(r["ir_label"]) for r in read_table(layout.ir_labels).to_pylist()}
    fixed = ("calibration.enabled=false", "walk.sem_bg_threshold=0.3", f"walk.beta={_walk_beta(config)}")
    _rerun_with(config, *fixed)  # the walk's cut alone, at a fixed threshold
    walk_only = shipped()
    _, rerun, logs, results = _rerun_with(config, *fixed, "walk.keep_relation_labels=true")
    assert rerun == {"calibrate", "cut-labels", "evaluate"}, logs
    kept = shipped()
    assert set(kept) == set(relation) and len(kept) == IMAGES
    for image_id, label in kept.items():
        seeds = relation[image_id]
        assert seeds.shape == label.shape
        confident = seeds != 255
        assert np.array_equal(label[confident], seeds[confident]), image_id
        assert np.array_equal(label[~confident], walk_only[image_id][~confident]), image_id
        assert (label == 15).any() and not (walk_only[image_id] == 15).any()  # no fixture image shows class 15
    assert results["cut-labels"]["images"] == IMAGES


def test_instances_that_follow_the_semantic_label_recut_only_and_tile_it(rerun):
    """walk.instances_follow_semantic: calibrate, cut-labels and evaluate re-run (no walk); with the
    instance threshold at the semantic one, each shipped image's instances of a class are exactly its
    semantic pixels of that class, disjoint, kept relation labels included (class 15, which the
    scores lack, is one region of its own)."""
    from ray_wsis.masks import decode_label_png, decode_rle
    from ray_wsis.pipeline.sink import read_table

    config = rerun
    _store_pattern_relation_labels(StageContext(config).layout)  # class 15 on the right third: labelled
    fixed = (
        "calibration.enabled=false",
        "walk.sem_bg_threshold=0.3",
        "walk.ins_bg_threshold=0.3",
        f"walk.beta={_walk_beta(config)}",
        "walk.keep_relation_labels=true",
    )
    _rerun_with(config, *fixed)
    _, rerun, logs, results = _rerun_with(config, *fixed, "walk.instances_follow_semantic=true")
    assert rerun == {"calibrate", "cut-labels", "evaluate"}, logs
    rows = read_table(StageContext(config).layout.pseudo_labels).to_pylist()
    assert len(rows) == IMAGES
    labelled = 0
    for row in rows:
        semantic = decode_label_png(row["semantic"])
        instances = row["instances"] or []
        masks = [decode_rle(i["rle"]) for i in instances]
        covered = np.zeros(semantic.shape, np.int64)
        for mask, instance in zip(masks, instances):
            assert mask.shape == semantic.shape and (semantic[mask] == instance["category_id"]).all(), row["image_id"]
            covered += mask
        assert covered.max(initial=0) <= 1, row["image_id"]  # disjoint
        assert np.array_equal(covered > 0, semantic > 0), row["image_id"]  # every labelled pixel is in one
        labelled += int((semantic == 15).any())
    assert labelled == IMAGES and results["cut-labels"]["images"] == IMAGES
    assert json.load(open(os.path.join(config.output, "metrics.json")))["ins_map50"] is not None


def test_images_without_relation_labels_are_cut_when_the_band_rule_opens_nothing(rerun):
    """relation-majority may choose 1.0: the kept relation labels ship and the pixels they leave open
    are background. An infer split wider than the train split has images without relation labels,
    which that cut would leave empty: calibrate records the rule's choice without kept labels for
    them, cut-labels cuts them there (their instances too, which follow that label), and evaluate's
    sweep scores that cut at 1.0."""
    from ray_wsis.masks import decode_label_png, decode_rle
    from ray_wsis.method.calibration import WITHOUT_RELATION_LABELS
    from ray_wsis.method.scores import cut_semantic
    from ray_wsis.pipeline.schema import SEMANTIC_WITHOUT_RELATION_LABELS, THRESHOLDS_KEY, at_original_size, walk_scores
    from ray_wsis.pipeline.sink import read_table

    config = rerun
    layout = StageContext(config).layout
    _store_pattern_relation_labels(layout)  # class 15, which no image shows: no score level is mostly its winner
    lists = Path(config.dataset.root) / "ImageSets" / "Segmentation"
    train, val = ((lists / f"{split}.txt").read_text().split() for split in ("train", "val"))
    (lists / "wider.txt").write_text("\n".join(train + val) + "\n")
    settings = (
        "dataset.infer_split=wider",
        "dataset.eval_split=wider",
        "walk.keep_relation_labels=true",
        "walk.instances_follow_semantic=true",
        "calibration.semantic_criterion=relation-majority",
    )
    changed = tiny_config(config.dataset.root, config.output, *settings)
    run_stages(changed, "make-cams", "make-pseudo-labels", log=lambda _: None)
    _store_walked_left_half(layout, set(val))  # a tiny run may walk an image to nothing: never these
    run_stages(changed, log=lambda _: None)
    semantic = json.load(open(os.path.join(config.output, "calibration.json")))["semantic"]
    assert semantic["threshold"]["default"] == 1.0, semantic["criterion"]
    bare = semantic[WITHOUT_RELATION_LABELS]["default"]
    assert bare == max(changed.calibration.candidates)  # the majority rule's choice without kept labels
    calibration = json.load(open(os.path.join(config.output, "calibration.json")))
    assert_default_instance_choice(calibration)  # at 1.0, following the semantic label, unless an edge step
    rows = read_table(layout.pseudo_labels).to_pylist()
    shipped = {r["image_id"]: decode_label_png(r["semantic"]) for r in rows}
    assert set(shipped) == set(train) | set(val)
    instances = {r["image_id"]: [decode_rle(i["rle"]).astype(bool) for i in r["instances"] or []] for r in rows}
    # their instances tile their label cut at the instance threshold (theirs where that opens nothing)
    tiled_at = calibration["instance"]["threshold"]["default"]
    tiled_at = bare if tiled_at == 1.0 else tiled_at
    relation = {r["image_id"]: decode_label_png(r["ir_label"]) for r in read_table(layout.ir_labels).to_pylist()}
    assert not set(val) & set(relation)
    for row in read_table(layout.scores).to_pylist():
        image_id, label = row["image_id"], shipped[row["image_id"]]
        if image_id in relation:  # the relation labels where confident, background elsewhere
            assert np.array_equal(label, np.where(relation[image_id] == 255, 0, relation[image_id])), image_id
            continue
        scores = walk_scores(row)
        cut = cut_semantic(scores, bare)
        expected = at_original_size(cut.label, cut.confidence, np.zeros((0, 1, 1), bool), row["height"], row["width"])
        assert np.array_equal(label, expected[0]), image_id
        assert label.any() == bool(row["labels"]), image_id  # not left empty
        tiled = cut_semantic(scores, tiled_at)
        tiled_label = at_original_size(tiled.label, tiled.confidence, np.zeros((0, 1, 1), bool), *label.shape)[0]
        assert np.array_equal(np.any(instances[image_id] or [np.zeros(label.shape, bool)], axis=0), tiled_label > 0)
    for shard in Path(layout.pseudo_labels.path).glob("*.parquet"):
        recorded = json.loads(pq.read_schema(shard).metadata[THRESHOLDS_KEY.encode()])
        assert recorded[SEMANTIC_WITHOUT_RELATION_LABELS]["default"] == bare, recorded
    # evaluate's sweep at 1.0 cuts those images where cut-labels did: it scores what ships
    metrics = json.load(open(os.path.join(config.output, "metrics.json")))
    assert metrics["images"]["semantic"] == len(train) + len(val)
    assert metrics["sem_miou"] == pytest.approx(metrics["sem_miou_by_threshold"]["1.00"], abs=1e-9)
    at = f"{calibration['instance']['threshold']['default']:.2f}"
    assert metrics["ins_map50"] == pytest.approx(metrics["ins_map50_by_threshold"][at], abs=1e-9)


def test_few_shot_calibration_with_kept_relation_labels_may_leave_their_band_to_the_background(rerun):
    """With kept relation labels, few-shot calibration scores the cut that opens nothing of their
    band too (1.0), and chooses it where the calibration masks say so: relation labels that are the
    masks' objects with the masks' background left open, and a walk that floods the left half of
    every image. It then records the threshold for images without relation labels, as
    relation-majority does, and the train images ship their relation labels with the band as
    background."""
    from ray_wsis.data.sources import build_source
    from ray_wsis.masks import decode_label_png, encode_label_png
    from ray_wsis.method.calibration import WITHOUT_RELATION_LABELS
    from ray_wsis.pipeline.sink import read_table

    config = rerun
    layout = StageContext(config).layout
    source = build_source(config.dataset, config.storage)
    for shard in Path(layout.ir_labels.path).glob("*.parquet"):
        table = pq.read_table(shard)
        pngs = []
        for image_id in table.column("image_id").to_pylist():
            truth = source.ground_truth(image_id).semantic
            pngs.append(encode_label_png(np.where((truth > 0) & (truth != 255), truth, 255).astype(np.uint8)))
        index = table.schema.get_field_index("ir_label")
        pq.write_table(table.set_column(index, table.schema.field(index), pa.array(pngs, pa.binary())), shard)
    _store_walked_left_half(layout, set(committed_ids(layout.scores)))
    lists = Path(config.dataset.root) / "ImageSets" / "Segmentation"
    train = (lists / "train.txt").read_text().split()
    (lists / "calib.txt").write_text("\n".join(train[:4]) + "\n")
    changed, _, _, _ = _rerun_with(config, "walk.keep_relation_labels=true", "dataset.calibration_split=calib")
    semantic = json.load(open(os.path.join(config.output, "calibration.json")))["semantic"]
    values = {float(t): v for t, v in semantic["values"].items()}
    assert semantic["threshold"]["default"] == 1.0, values
    assert values[1.0] > max(v for t, v in values.items() if t < 1.0)
    assert semantic[WITHOUT_RELATION_LABELS]["default"] == max(changed.calibration.candidates)
    relation = {r["image_id"]: decode_label_png(r["ir_label"]) for r in read_table(layout.ir_labels).to_pylist()}
    for row in read_table(layout.pseudo_labels).to_pylist():
        if row["image_id"] in relation:
            seeds = relation[row["image_id"]]
            assert np.array_equal(decode_label_png(row["semantic"]), np.where(seeds == 255, 0, seeds)), row["image_id"]


def test_the_relation_majority_threshold_is_read_off_the_relation_labels(rerun):
    """calibration.semantic_criterion=relation-majority: calibrate records the lowest candidate
    above which the relation labels' confident pixels are mostly the winning class; only
    calibrate and what follows re-run."""
    from ray_wsis.stages.calibrate import RELATION_MAJORITY

    config = rerun
    _store_pattern_relation_labels(StageContext(config).layout)
    changed, rerun, logs, _ = _rerun_with(
        config, "walk.keep_relation_labels=true", "calibration.semantic_criterion=relation-majority"
    )
    assert rerun == {"calibrate", "cut-labels", "evaluate"}, logs
    semantic = json.load(open(os.path.join(config.output, "calibration.json")))["semantic"]
    assert semantic["criterion"].startswith(RELATION_MAJORITY) and semantic["relation_pixels"] > 0
    chances = [semantic["values"][str(t)] for t in changed.calibration.candidates]
    assert all(b >= a for a, b in zip(chances, chances[1:]))  # made monotone
    chosen = semantic["threshold"]["default"]
    if chosen == 1.0:  # no level is mostly the class: nothing the relation labels leave open is labelled
        assert max(chances) < 0.5 and "leave open are background" in semantic["criterion"]
    else:
        assert chosen in changed.calibration.candidates
        assert min(p for t, p in zip(changed.calibration.candidates, chances) if t >= chosen) >= 0.5
    sweep = json.load(open(os.path.join(config.output, "metrics.json")))["sem_miou_by_threshold"]
    assert "1.00" in sweep  # evaluate scores that cut too


def test_a_threshold_change_reruns_calibrate_and_the_cut_only(rerun):
    """Thresholds come from the stored scores: no network, no walk; the one writer re-cuts every shard."""
    import pyarrow.parquet as pq

    from ray_wsis.pipeline.schema import THRESHOLDS_KEY

    config = rerun
    beta = f"walk.beta={_walk_beta(config)}"
    off = ("calibration.enabled=false", "walk.sem_bg_threshold=0.35", "walk.ins_bg_threshold=0.45", beta)
    _, rerun, logs, results = _rerun_with(config, *off)
    assert rerun == {"calibrate", "cut-labels", "evaluate"}, logs
    assert results["cut-labels"]["cut"] == results["cut-labels"]["shards"] and results["cut-labels"]["images"] == IMAGES
    folder = Path(config.output) / "pseudo_labels"
    for shard in folder.glob("part-*.parquet"):
        recorded = json.loads(pq.read_schema(shard).metadata[THRESHOLDS_KEY.encode()])
        assert recorded["source"] == "config" and recorded["semantic"]["default"] == 0.35, recorded
        assert recorded["instance"]["default"] == 0.45
    _, back, logs, _ = _rerun_with(config, beta)  # calibration on again: the calibrated cut is back
    assert back == {"calibrate", "cut-labels", "evaluate"}, logs
    sources = {
        json.loads(pq.read_schema(p).metadata[THRESHOLDS_KEY.encode()])["source"] for p in folder.glob("*.parquet")
    }
    assert sources == {"calibration"}


def test_an_upstream_change_plans_that_stage_and_everything_after(finished_run):
    from ray_wsis.stages.base import RunOptions
    from ray_wsis.stages.run import may_run, selected

    config, _ = finished_run
    ctx = StageContext(tiny_config(config.dataset.root, config.output, "walk.beta=8", "ir_label.fg_threshold=0.5"))
    assert may_run(ctx, selected(ctx, None), RunOptions()) == [
        "make-ir-labels",
        "train-irn",
        "make-pseudo-labels",
        "calibrate",
        "cut-labels",
        "evaluate",
    ]
    assert may_run(ctx, selected(ctx, None), RunOptions(frozenset({"make-cams"}))) == [
        "make-cams",
        "make-ir-labels",
        "train-irn",
        "make-pseudo-labels",
        "calibrate",
        "cut-labels",
        "evaluate",
    ]


def _add_images(root: str) -> None:
    """Two new training images: a copy of an existing one and a truncated (broken) JPEG."""
    import shutil

    base = os.path.join(root, "JPEGImages", "syn_000001.jpg")
    data = open(base, "rb").read()
    for name, content in (("new_000001", data), ("new_000002", data[: len(data) // 3])):
        with open(os.path.join(root, "JPEGImages", f"{name}.jpg"), "wb") as f:
            f.write(content)
        for folder, ext in (("Annotations", "xml"), ("SegmentationClass", "png"), ("SegmentationObject", "png")):
            shutil.copy(os.path.join(root, folder, f"syn_000001.{ext}"), os.path.join(root, folder, f"{name}.{ext}"))
    with open(os.path.join(root, "ImageSets", "Segmentation", "train.txt"), "a") as f:
        f.write("new_000001\nnew_000002\n")


def test_new_images_are_labelled_alone_and_a_fixed_one_on_retry(rerun):
    config = rerun
    config = tiny_config(config.dataset.root, config.output, f"walk.beta={_walk_beta(config)}")
    _add_images(config.dataset.root)
    results = run_stages(config)
    assert results["train-cam"]["action"] == "kept" and results["train-irn"]["action"] == "kept"
    cams = results["make-cams"]
    assert (cams["action"], cams["input"], cams["processed"], cams["kept"], cams["failed"]) == (
        "new",
        IMAGES + 2,
        1,
        IMAGES,
        1,
    )
    labels = results["make-pseudo-labels"]
    assert (labels["action"], labels["processed"], labels["kept"], labels["failed"]) == ("new", 1, IMAGES, 1)
    layout = StageContext(config).layout
    ids = committed_ids(layout.pseudo_labels)
    assert len(ids) == len(set(ids)) == IMAGES + 1 and "new_000002" not in ids

    _add_images_fix = os.path.join(config.dataset.root, "JPEGImages")
    with open(os.path.join(_add_images_fix, "syn_000001.jpg"), "rb") as f:
        good = f.read()
    with open(os.path.join(_add_images_fix, "new_000002.jpg"), "wb") as f:
        f.write(good)
    assert run_stages(config)["make-cams"]["action"] == "skip"  # a fixed image waits for --retry-failed
    retried = run_stages(config, retry_failed=True)
    assert retried["make-cams"]["action"] == "retry" and retried["make-cams"]["processed"] == 1
    assert retried["make-pseudo-labels"]["processed"] == 1 and retried["make-pseudo-labels"]["failed"] == 0
    ids = committed_ids(layout.pseudo_labels)
    assert len(ids) == len(set(ids)) == IMAGES + 2
    assert {s["unaccounted"] for s in retried.values() if isinstance(s, dict) and "unaccounted" in s} == {0}


def test_commands_read_the_outputs_own_config(finished_run, tmp_path, capsys):
    config, _ = finished_run
    assert cli_main(["export", "--labels", config.output, "--format", "coco", "--out", str(tmp_path / "c.json")]) == 0
    assert cli_main(["visualize", "--labels", config.output, "--out", str(tmp_path / "report"), "--n", "2"]) == 0
    capsys.readouterr()
    assert cli_main(["status", config.output, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {s["stage"]: s["state"] for s in report["stages"]}["train-cam"] == "done"
    assert report["calibration"]["mode"] == "label-free"
    assert cli_main(["status", config.output]) == 0
    text = capsys.readouterr().out
    assert "where the inference time went" in text and "make-cams: actor " in text and "per forward pass" in text


def test_a_contradicting_config_is_reported_field_by_field(finished_run, tmp_path, capsys):
    config, _ = finished_run
    beta = markers(config)["make-pseudo-labels"]["fields"]["walk.beta"]  # what the output was made with
    other = tmp_path / "other.yaml"
    other.write_text(f"dataset:\n  root: {config.dataset.root}\noutput: {config.output}\nwalk:\n  beta: 3\n")
    assert cli_main(["status", config.output, "--config", str(other)]) == 0
    captured = capsys.readouterr()
    change = f"walk.beta: {float(beta)} -> 3.0"
    assert "note: --config differs" in captured.err and change in captured.err
    assert "stale" in captured.out and change in captured.out


def test_every_config_field_is_claimed_by_a_stage_or_marked():
    from ray_wsis.cli import STAGE_NAMES
    from ray_wsis.config import NOT_AFFECTING_OUTPUTS, Config, leaf_fields
    from ray_wsis.downstream.train import STAGES as DOWNSTREAM_STAGES
    from ray_wsis.stages import registry

    config = Config()
    stages = [s for p in registry.PIPELINES for s in p] + list(DOWNSTREAM_STAGES.values())
    claimed = {name for s in stages for prefix in s.reads for name in leaf_fields(config, prefix)}
    for prefix in (*NOT_AFFECTING_OUTPUTS, *registry.INPUT_FIELDS):
        claimed |= set(leaf_fields(config, prefix))
    assert set(leaf_fields(config)) - claimed == set()
    assert set(STAGE_NAMES) == set(registry.NAMES)
