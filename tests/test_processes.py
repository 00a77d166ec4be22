"""The helpers that end what a test started: a process tree by pid, and orphans by the test's token."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.processes import TOKEN_VARIABLE, exited, kill_tagged, kill_tree, tagged

ORPHAN = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True,\n"
    "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(child.pid, flush=True)\n"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_tagged_ends_the_orphan_of_a_process_that_exited_and_nothing_else():
    env, token = tagged(dict(os.environ))
    parent = subprocess.run([sys.executable, "-c", ORPHAN], env=env, capture_output=True, text=True, check=True)
    orphan = int(parent.stdout.split()[0])  # its parent is gone: no parent link or group leads to it
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # no token
    try:
        assert _alive(orphan)
        assert kill_tagged(token) == []
        deadline = time.monotonic() + 10
        while _alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(orphan)
        assert not exited(stranger)  # a process without the token is not touched
    finally:
        kill_tree(stranger)
        stranger.wait(timeout=10)
        assert env[TOKEN_VARIABLE] == token and TOKEN_VARIABLE not in os.environ
