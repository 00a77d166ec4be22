"""The functions that Ray CPU tasks run live in modules that import no torch.

A Ray worker imports the module of every function it runs. One such function in a module that
imports torch and torchvision costs each worker 5-6 s of CPU (keep_ids did, from inference.py,
until bench/scaling.py's per-process CPU times showed it), which a 2-core box takes from the
model actors next to it.
"""

from __future__ import annotations

import subprocess
import sys

from ray_wsis.downstream.batches import instance_batch, semantic_batch
from ray_wsis.labels import _decode_batch
from ray_wsis.pipeline.decode_task import decode_images
from ray_wsis.pipeline.progress import count_rows, counted_task
from ray_wsis.pipeline.reads import keep_ids
from ray_wsis.pipeline.sink import ShardSink
from ray_wsis.stages.calibrate import agreement_task, expected_iou_task, label_free_task, relation_task
from ray_wsis.stages.cut_labels import cut_shard_task
from ray_wsis.stages.evaluate import eval_cams, eval_cut, eval_ir_labels, eval_pseudo_labels
from ray_wsis.stages.make_affinity_labels import make_affinity_labels
from ray_wsis.stages.make_ir_labels import make_ir_labels
from ray_wsis.stages.relation_labels import decode_and_label
from ray_wsis.stages.thresholds import eval_sweep
from ray_wsis.train.batches import classifier_batch, relation_batch, top_left_batch

TASK_CODE = [
    keep_ids,
    decode_images,
    decode_and_label,
    make_ir_labels,
    make_affinity_labels,
    eval_cams,
    eval_ir_labels,
    eval_pseudo_labels,
    eval_cut,
    eval_sweep,
    label_free_task,
    agreement_task,
    relation_task,
    expected_iou_task,
    cut_shard_task,
    classifier_batch,
    relation_batch,
    top_left_batch,
    _decode_batch,
    semantic_batch,
    instance_batch,
    ShardSink,
    count_rows,
    counted_task,
]


def test_task_modules_import_without_torch():
    modules = sorted({code.__module__ for code in TASK_CODE})
    probe = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(name)\n"
        "        break\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{done.stdout.strip()} imports torch: Ray task workers would pay for it"
