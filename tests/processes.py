"""End the processes a test started, and only those: found from the pid of what it launched.

A process a test launched (a CLI driver, say) may start others that leave its process group or
session (a local Ray's workers run in sessions of their own), so killing its group is not enough;
killing by name or by "orphaned" (ppid 1) would also hit processes that other people started.
Here the launched process and everything under it are found by parent links (and by its process
group, for anything that left the tree but kept the group) and signalled by pid.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import time
import uuid

try:
    import psutil
except ImportError:  # ray[default] bundles it in ray/thirdparty_files, which `import ray` puts on sys.path
    import ray  # noqa: F401

    psutil = importlib.import_module("psutil")


def _ours(root: int) -> dict[int, psutil.Process]:
    """The root, its descendants, and members of the process group the root leads (if it leads one)."""
    found: dict[int, psutil.Process] = {}
    try:
        top = psutil.Process(root)
        found[root] = top
        for child in top.children(recursive=True):
            found[child.pid] = child
    except psutil.NoSuchProcess:
        pass
    try:
        leads_group = os.getpgid(root) == root  # a zombie still answers: the caller has not reaped it
    except ProcessLookupError:
        leads_group = False
    if leads_group:
        for proc in psutil.process_iter():
            try:
                if proc.pid not in found and os.getpgid(proc.pid) == root:
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
    found.pop(os.getpid(), None)  # never the test itself
    return found


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil refuses a pid reused by another process since we found it
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exited(process: subprocess.Popen) -> bool:
    """Whether a child has ended, without reaping it (unlike ``poll``): its pid and its process
    group id then stay reserved for us, so kill_tree can still find what it left behind."""
    if process.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid == process.pid


def kill_tree(process: subprocess.Popen, timeout: float = 30.0) -> list[int]:
    """SIGKILL a process this test launched and every process it started; return the pids still running.

    Call it before the launched process is reaped (``wait``, ``poll``, ``communicate``): until then
    the kernel gives neither its pid nor its process group id to anyone else, so both name only
    processes that descend from it.

    Everything is first frozen with SIGSTOP, root first and then each newly found descendant, until
    a pass finds none new: a stopped process starts no other, so nothing escapes between finding
    the processes and killing them. Then each one is SIGKILLed by pid. Like SIGKILL alone, SIGSTOP
    cannot be caught, so nobody gets to clean up: a crash of the whole tree at once.
    """
    assert process.returncode is None, "kill_tree needs a process that has not been reaped yet"
    root = process.pid
    frozen: dict[int, psutil.Process] = {}
    while True:
        new = {pid: proc for pid, proc in _ours(root).items() if pid not in frozen}
        if not new:
            break
        for proc in new.values():
            _signal(proc, signal.SIGSTOP)
        frozen.update(new)
    return _kill_frozen(frozen, timeout)


def _kill_frozen(frozen: dict[int, psutil.Process], timeout: float) -> list[int]:
    """SIGKILL stopped processes by pid; the pids still running after ``timeout``."""
    for proc in frozen.values():
        _signal(proc, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_running(proc) for proc in frozen.values()):
            return []
        time.sleep(0.1)
    return sorted(pid for pid, proc in frozen.items() if _running(proc))


TOKEN_VARIABLE = "RAY_WSIS_TEST_TOKEN"
"""An environment variable whose value (a fresh uuid) marks every process a launched driver starts."""


def tagged(env: dict[str, str]) -> tuple[dict[str, str], str]:
    """``env`` plus a fresh token that the launched process and everything it starts inherit.

    A driver that exits normally leaves nothing to find by parent links: a Ray worker that outlived
    its raylet (a TrainController, seen once) has been handed to init, in a session of its own.
    Its environment still carries the token, which nobody else has."""
    token = uuid.uuid4().hex
    return {**env, TOKEN_VARIABLE: token}, token


def kill_tagged(token: str, timeout: float = 30.0) -> list[int]:
    """SIGKILL every process whose environment carries ``token``; return the pids still running."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(TOKEN_VARIABLE) == token:
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in found.values():
        _signal(proc, signal.SIGSTOP)
    return _kill_frozen(found, timeout)
