"""Ray job: train Mask R-CNN on a run's pseudo-labels (instance masks, boxes from their RLEs).

    ray job submit --working-dir . -- python jobs/train_maskrcnn.py --config run.yaml \
        --set downstream.epochs=24 --set ray.num_workers=4 --set ray.use_gpu=true

Connects to RAY_ADDRESS (set by Ray Jobs) or starts a local Ray; re-submitting with the same
run_name resumes from the last epoch's checkpoint.
"""

import sys

from ray_wsis.downstream.train import job_main

if __name__ == "__main__":
    sys.exit(job_main("instance"))
