"""The review loop against a real Label Studio: push the least certain images, a reviewer (played
here through the REST API) submits masks, pull; the calibration, the shards and a second pull."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from ray_wsis.cli import main as cli_main
from ray_wsis.data.voc import VOCSource
from ray_wsis.labels import iter_pseudo_labels
from ray_wsis.review import brush_rle
from ray_wsis.review.brush import decode_result, prediction_result, regions
from ray_wsis.review.client import KEY_VARIABLE
from tests.label_studio_server import launch, stop, wait_ready
from tests.pipeline_helpers import markers, tiny_config

pytestmark = pytest.mark.slow

WORST = 3


@pytest.fixture(scope="module")
def reviewed_run(tiny_run, tmp_path_factory):
    """A copy of the finished tiny run's output (the dataset is shared, unchanged) and a Label Studio
    server of its own."""
    base = tmp_path_factory.mktemp("review")
    server = launch(base / "label-studio")
    try:
        config, _ = tiny_run
        shutil.copytree(config.output, base / "out")
        yield tiny_config(config.dataset.root, str(base / "out")), wait_ready(server)
    finally:
        stop(server)


def api(server, method: str, path: str, **kwargs):
    answer = requests.request(method, server.url + path, headers={"Authorization": f"Token {server.key}"}, **kwargs)
    assert answer.status_code < 400, answer.text
    return answer.json() if answer.content else None


def shipped(output: str) -> dict[str, dict]:
    rows = list(iter_pseudo_labels(output))
    ids = [r["image_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an image is in the shards twice"
    return {r["image_id"]: r for r in rows}


def truth_result(source: VOCSource, image_id: str, class_names) -> list[dict]:
    """What the test's reviewer draws: the dataset's ground truth, one region per object."""
    gt = source.ground_truth(image_id)
    semantic = np.where(gt.semantic == 255, 0, gt.semantic).astype(np.uint8)
    return prediction_result(regions(semantic, gt.instance_masks, gt.instance_class_ids), class_names)


def test_push_review_pull(reviewed_run, monkeypatch, capsys):
    config, server = reviewed_run
    output = config.output
    monkeypatch.setenv(KEY_VARIABLE, server.key)
    before = shipped(output)

    assert cli_main(["review", "push", output, "--url", server.url, "--worst", str(WORST)]) == 0
    pushed = json.loads(Path(output, "review", "pushed.json").read_text())
    assert len(pushed["tasks"]) == WORST and server.key not in json.dumps(pushed)
    doubts = [t["uncertainty"] for t in pushed["tasks"]]
    assert doubts == sorted(doubts, reverse=True)  # least certain first
    project = pushed["projects"][0]["id"]
    listed = api(server, "GET", "/api/tasks/", params={"project": project, "fields": "all", "page_size": 100})
    tasks = {t["data"]["image_id"]: t for t in listed["tasks"]}
    assert set(tasks) == {t["image_id"] for t in pushed["tasks"]}
    names = VOCSource(config.dataset.root).class_names
    for image_id, task in tasks.items():  # the prediction is our shipped semantic mask
        row = before[image_id]
        (prediction,) = task["predictions"]
        drawn = decode_result(prediction["result"], names, row["height"], row["width"])
        assert np.array_equal(drawn.semantic, row["semantic"])
        image = requests.get(server.url + task["data"]["image"], headers={"Authorization": f"Token {server.key}"})
        assert image.status_code == 200 and len(image.content) > 100  # uploaded, served by the server

    # the reviewer: ground truth for every task; one task first gets a wrong mask, then the right
    # one (the latest counts), and a later cancelled annotation (not a submission)
    source = VOCSource(config.dataset.root)
    twice = sorted(tasks)[0]
    api(server, "POST", f"/api/tasks/{tasks[twice]['id']}/annotations/", json={"result": [], "was_cancelled": False})
    for image_id, task in tasks.items():
        result = truth_result(source, image_id, names)
        api(server, "POST", f"/api/tasks/{task['id']}/annotations/", json={"result": result, "was_cancelled": False})
    api(server, "POST", f"/api/tasks/{tasks[twice]['id']}/annotations/", json={"result": [], "was_cancelled": True})

    capsys.readouterr()
    assert cli_main(["review", "pull", output, "--url", server.url]) == 0
    calibration = json.loads(Path(output, "calibration.json").read_text())
    assert calibration["mode"] == "few-shot" and calibration["image_ids"] == sorted(tasks)
    after = shipped(output)
    assert set(after) == set(before)
    human = {i for i, r in after.items() if r["source"] == "human"}
    assert human == set(tasks)
    for image_id in human:
        gt = source.ground_truth(image_id)
        assert np.array_equal(after[image_id]["semantic"], np.where(gt.semantic == 255, 0, gt.semantic))
        assert after[image_id]["confidence"].min() == 255 and len(after[image_id]["masks"]) == len(gt.instance_masks)
    assert all(r["source"] == "model" for i, r in after.items() if i not in human)
    evaluated = markers(config)["evaluate"]["inputs_count"]
    assert evaluated == len(before) - WORST  # evaluation leaves the reviewed images out
    capsys.readouterr()
    assert cli_main(["status", output]) == 0
    assert f"review: {WORST} images pushed to {server.url}" in capsys.readouterr().out

    table = Path(output, "review", "human_labels.parquet")
    stamp, finished = table.stat().st_mtime_ns, {k: m["finished_at"] for k, m in markers(config).items()}
    capsys.readouterr()
    assert cli_main(["review", "pull", output, "--url", server.url]) == 0  # a second pull changes nothing
    out = capsys.readouterr().out
    assert f"0 new, 0 changed, {WORST} unchanged" in out
    assert table.stat().st_mtime_ns == stamp
    assert {k: m["finished_at"] for k, m in markers(config).items()} == finished
    assert pq.read_table(table).num_rows == WORST

    # a corrected correction: the image's shipped label follows the latest annotation
    changed = sorted(tasks)[1]
    region = truth_result(source, changed, names)[0]  # one region, drawn empty: nothing in the image
    nothing = np.zeros((after[changed]["height"], after[changed]["width"]), bool)
    empty = [{**region, "value": {**region["value"], "rle": brush_rle.encode(nothing)}}]
    api(server, "POST", f"/api/tasks/{tasks[changed]['id']}/annotations/", json={"result": empty})
    assert cli_main(["review", "pull", output, "--url", server.url]) == 0
    assert "0 new, 1 changed" in capsys.readouterr().out
    assert shipped(output)[changed]["semantic"].max() == 0

    # the same project again: the next least certain images, none pushed twice, none reviewed yet
    assert cli_main(["review", "push", output, "--url", server.url, "--worst", "2"]) == 0
    again = json.loads(Path(output, "review", "pushed.json").read_text())
    assert [p["id"] for p in again["projects"]] == [project] and len(again["tasks"]) == WORST + 2
    assert len({t["image_id"] for t in again["tasks"]}) == WORST + 2
    capsys.readouterr()
    assert cli_main(["review", "pull", output, "--url", server.url]) == 0
    assert "0 changed, 3 unchanged; 2 pushed images not reviewed yet" in capsys.readouterr().out


def test_user_errors_are_one_line(reviewed_run, tmp_path, monkeypatch, capsys):
    config, server = reviewed_run
    copy = tmp_path / "out"
    shutil.copytree(config.output, copy, ignore=shutil.ignore_patterns("review"))
    monkeypatch.setenv(KEY_VARIABLE, "not-the-key-000000")
    assert cli_main(["review", "push", str(copy), "--url", server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the API key in LABEL_STUDIO_API_KEY" in err[0]

    monkeypatch.setenv(KEY_VARIABLE, server.key)
    assert cli_main(["review", "pull", str(copy), "--url", server.url]) == 2
    assert "run `ray-wsis review push` first" in capsys.readouterr().err

    (copy / "review").mkdir()
    entry = {"image_id": "x", "task_id": 1, "project_id": 999, "height": 4, "width": 4}
    record = {"url": server.url, "projects": [{"id": 999, "title": "gone"}], "tasks": [entry]}
    (copy / "review" / "pushed.json").write_text(json.dumps(record))
    assert cli_main(["review", "pull", str(copy), "--url", server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no project 999" in err[0]

    monkeypatch.delenv(KEY_VARIABLE)
    assert cli_main(["review", "push", str(copy), "--url", server.url]) == 2
    assert "no API key: set LABEL_STUDIO_API_KEY" in capsys.readouterr().err
