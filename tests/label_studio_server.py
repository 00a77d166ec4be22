"""A real Label Studio server for the review tests: started on a free loopback port with a temporary
data directory and a preset API key, stopped by its pid.

Label Studio lives in its own environment (`make test` builds .venv-label-studio: it pins numpy and
pyarrow below what ray_wsis runs with). The first start of a data directory runs its database
migrations (a minute or two on 2 cores): :func:`launch` returns at once, so a test can train its run
meanwhile, and :func:`wait_ready` waits for the server. The API key is a legacy token, which Label
Studio accepts only when enabled at the first start of a data directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.processes import exited, kill_tree

REPO = Path(__file__).resolve().parents[1]
EXECUTABLE = Path(os.environ.get("RAY_WSIS_LABEL_STUDIO", REPO / ".venv-label-studio" / "bin" / "label-studio"))
API_KEY = "ray-wsis-test-key-0123456789"
ADMIN = "reviewer@example.com"


@dataclass
class Server:
    url: str
    key: str
    process: subprocess.Popen
    data_dir: Path


def require_label_studio() -> Path:
    """The label-studio executable; a skip with its reason outside CI, a failure in CI."""
    if not EXECUTABLE.exists():
        why = f"Label Studio is not installed at {EXECUTABLE} (make .venv-label-studio/.installed)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return EXECUTABLE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(home: Path) -> dict[str, str]:
    """A clean environment: Label Studio reads bare USERNAME, PORT, HOST, DEBUG, CI... as settings."""
    return {
        "PATH": f"{EXECUTABLE.parent}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LABEL_STUDIO_USERNAME": ADMIN,
        "LABEL_STUDIO_PASSWORD": "reviewer-password-1",
        "LABEL_STUDIO_USER_TOKEN": API_KEY,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }


def launch(data_dir: Path) -> Server:
    """Start a server on ``data_dir`` (not waiting for it) on a free loopback port."""
    executable = require_label_studio()
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / f"{data_dir.name}.log", "wb")
    proc = subprocess.Popen(
        [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
        + ["--data-dir", str(data_dir), "--log-level", "WARNING"],
        env=_environment(data_dir.parent),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(f"http://127.0.0.1:{port}", API_KEY, proc, data_dir)


def wait_ready(server: Server, timeout_s: float = 400.0) -> Server:
    """Wait until the server answers our key on the port we asked for (a busy port would have sent
    it to the next one without a word)."""
    deadline = time.monotonic() + timeout_s
    log = server.data_dir.parent / f"{server.data_dir.name}.log"
    while time.monotonic() < deadline:
        if exited(server.process):
            raise RuntimeError(f"Label Studio exited: see {log}")
        try:
            answer = requests.get(
                f"{server.url}/api/current-user/whoami", headers={"Authorization": f"Token {API_KEY}"}, timeout=5
            )
            if answer.status_code == 200 and answer.json().get("email") == ADMIN:
                return server
        except requests.RequestException:
            pass
        time.sleep(1.0)
    stop(server)
    raise RuntimeError(f"Label Studio did not answer on {server.url} in {timeout_s:.0f} s: see {log}")


def stop(server: Server, timeout_s: float = 20.0) -> None:
    """SIGTERM by pid (Label Studio closes its database), then SIGKILL
    whatever of its process tree is left."""
    proc = server.process
    proc.terminate()
    deadline = time.monotonic() + timeout_s
    while not exited(proc) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not exited(proc):
        kill_tree(proc)
    proc.wait()
