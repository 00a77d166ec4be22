"""Fault injection for the reliability tests: each hook fires once, guarded by a flag file.

Set in the environment before Ray starts (workers inherit it):
  RAY_WSIS_FAULT_FLAG=<path>              the once-only guard (required to arm any hook)
  RAY_WSIS_FAULT_TRAIN_EPOCH=<n>          a Ray Train worker raises when epoch n starts
  RAY_WSIS_FAULT_ACTOR=<cam|pseudo_labels> an inference actor's process exits mid-stage
  RAY_WSIS_FAULT_SLOW_ACTOR=<stage>:<seconds> an inference actor sleeps before each batch (no flag
                                          needed), so a test can kill a node mid-stage
  RAY_WSIS_FAULT_SLOW_EPOCH=<seconds>     a Ray Train worker sleeps at the start of every epoch (no flag)
  RAY_WSIS_FAULT_SLOW_CUT=<seconds>       cut-labels' tasks sleep after each shard (no flag
                                          needed), so a test can kill the driver half-way
Unset (the default), the hooks do nothing.
"""

from __future__ import annotations

import os

FLAG = "RAY_WSIS_FAULT_FLAG"
TRAIN_EPOCH = "RAY_WSIS_FAULT_TRAIN_EPOCH"
ACTOR = "RAY_WSIS_FAULT_ACTOR"
SLOW_CUT = "RAY_WSIS_FAULT_SLOW_CUT"
SLOW_ACTOR = "RAY_WSIS_FAULT_SLOW_ACTOR"
SLOW_EPOCH = "RAY_WSIS_FAULT_SLOW_EPOCH"


def _arm_once() -> bool:
    """True exactly once per flag file (atomic create), False when disarmed or spent."""
    flag = os.environ.get(FLAG)
    if not flag:
        return False
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def maybe_fail_epoch(epoch: int) -> None:
    if os.environ.get(SLOW_EPOCH):
        import time

        time.sleep(float(os.environ[SLOW_EPOCH]))
    target = os.environ.get(TRAIN_EPOCH)
    if target is not None and int(target) == epoch and _arm_once():
        raise RuntimeError(f"injected training failure at epoch {epoch}")


def maybe_kill_actor(stage: str) -> None:
    if os.environ.get(ACTOR) == stage and _arm_once():
        os._exit(1)  # a hard crash: no exception handling, the process is gone
    target, _, seconds = os.environ.get(SLOW_ACTOR, "").partition(":")
    if target == stage and seconds:
        import time

        time.sleep(float(seconds))


def maybe_slow_cut() -> None:
    seconds = os.environ.get(SLOW_CUT)
    if seconds:
        import time

        time.sleep(float(seconds))
