"""Real Ray nodes on this machine for the tests: a head and worker nodes started with `ray start`.

Each node is its own `ray start` in its own session (process group), with its own CPUs and
custom resources; every process of a node (raylet, agents, its workers) is found through
/proc by process group and parent links, so a node can be killed whole (SIGKILL, like a lost
machine) and everything is stopped by pid at the end, whether the test passed or not. The head
uses a private temp dir and ports, so no other Ray on the machine is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


def free_ports(n: int) -> list[int]:
    """Ephemeral ports (outside Ray's default worker range 10002-19999)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, command line), read from /proc."""
    out: dict[int, tuple[int, int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(name)] = (int(fields[1]), int(fields[2]), cmd)
    return out


def group_pids(pgid: int, marker: Optional[str] = None) -> set[int]:
    """Processes of a process group (or whose command line names ``marker``) and their descendants."""
    procs = processes()
    ours = {pid for pid, (_, group, cmd) in procs.items() if group == pgid or (marker and marker in cmd)}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _) in procs.items() if ppid in ours} - ours
        ours |= children
        grew = bool(children)
    return ours - {os.getpid(), os.getppid()}


def alive(pids: set[int]) -> set[int]:
    """Zombies (reaped later by init) don't count."""
    out = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.add(pid)
        except OSError:
            pass
    return out


def kill(pids: set[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def ray_cli() -> str:
    local = Path(sys.executable).with_name("ray")
    return str(local) if local.exists() else shutil.which("ray") or "ray"


@dataclass
class Node:
    name: str
    pgid: int
    resources: dict[str, float]
    marker: Optional[str] = None

    def pids(self) -> set[int]:
        return group_pids(self.pgid, self.marker)


@dataclass
class LocalCluster:
    """A head and worker nodes; ``address`` is the GCS address, ``dashboard`` the HTTP one."""

    temp_dir: str
    address: str
    dashboard: str
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)
    with_dashboard: bool = True

    def add_node(
        self, num_cpus: float, resources: dict[str, float], name: str = "", env: Optional[dict[str, str]] = None
    ) -> Node:
        """`ray start --address` a worker node; returns once Ray sees it. ``env``: the node's
        environment, which its workers inherit (default: the cluster's)."""
        before = len(self.nodes)
        cmd = [
            ray_cli(),
            "start",
            f"--address={self.address}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}",
            "--disable-usage-stats",
        ]
        starter = subprocess.Popen(
            cmd,
            env=self.env if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        out, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, f"ray start (worker) failed:\n{out[-3000:]}"
        node = Node(name or f"worker{len(self.nodes)}", starter.pid, resources)
        self.nodes.append(node)
        self.wait_for_nodes(before + 1)
        return node

    def alive_nodes(self) -> int:
        """Alive nodes as this cluster's own GCS reports them, through its dashboard's state API; not
        ``ray.nodes()``, which answers for whatever Ray this test process is connected to (another
        module's local Ray, say). Without a dashboard: the nodes started and not killed here."""
        if not self.with_dashboard:
            return len(self.nodes)
        from ray.util.state import list_nodes

        return sum(1 for n in list_nodes(address=self.dashboard, limit=1000) if n.state == "ALIVE")

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        seen: object = "nothing yet"
        while time.monotonic() < deadline:
            try:
                seen = self.alive_nodes()
            except Exception as exc:  # the head's dashboard may still be starting
                seen = f"no answer ({type(exc).__name__})"
            if seen == count:
                return
            time.sleep(0.5)
        raise AssertionError(f"expected {count} alive nodes, the cluster's GCS reports {seen}")

    def kill_node(self, node: Node) -> None:
        """SIGKILL every process of a worker node at once: a machine that vanished."""
        kill(node.pids())
        self.nodes.remove(node)

    def remove_workers(self) -> None:
        """Stop every worker node as ``stop`` does and wait until the GCS sees the head alone: the
        next test on this head starts from it, as from a new cluster."""
        workers = self.nodes[1:]
        survivors = _stop(workers)
        self.nodes[1:] = [n for n in workers if alive(n.pids())]  # still ours to stop at the end
        assert not survivors, f"Ray processes survived SIGKILL: {survivors}"
        self.wait_for_nodes(1)

    def stop(self) -> list[int]:
        """SIGTERM every node's processes by pid, SIGKILL what is left; returns the survivors."""
        return _stop(self.nodes)


def _stop(nodes: list[Node]) -> list[int]:
    """SIGTERM the nodes' processes by pid, SIGKILL what is left; returns the survivors.

    The grace is short: a test's cluster has nothing left to save (its results are on the object
    store, its temp dir is deleted next), and some of Ray's processes (the GCS, the autoscaler's
    monitor, dashboard modules) outlived 15 s of SIGTERM on this 2-core box, so the 15 s grace
    this had cost every cluster 15 s of waiting."""
    every = lambda: set().union(*(n.pids() for n in nodes)) if nodes else set()  # noqa: E731
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        kill(every(), sig)
        deadline = time.monotonic() + grace
        while alive(every()) and time.monotonic() < deadline:
            time.sleep(0.2)
    return sorted(alive(every()))


FAST_NODE_DEATH = {
    # A killed node refuses connections at once, so the GCS declares it dead after ~5 checks a
    # second apart instead of Ray's 3 s apart; the node-loss tests wait for that. A live node that
    # is merely starved of CPU keeps Ray's 10 s reply timeout per check: a short one risks a busy
    # 2-core box declaring a live node (its own head, say) dead.
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
}


@contextmanager
def local_cluster(
    head_cpus: float = 2,
    head_resources: Optional[dict[str, float]] = None,
    dashboard: bool = True,
    fast_node_death: bool = False,
) -> Iterator[LocalCluster]:
    """A `ray start --head` on private ports and temp dir; every node stopped by pid afterwards.

    fast_node_death: for tests that kill nodes (FAST_NODE_DEATH); others keep Ray's defaults.
    """
    temp_dir = tempfile.mkdtemp(prefix="rwc-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    gcs, dash, client, agent = free_ports(4)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # the nodes' `python`
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        # the dashboard and each of its modules (processes of their own) must be up within Ray's 60 s
        # and 30 s; on a busy 2-core box they were not, and `ray start --head` failed (seen 3 times)
        RAY_DASHBOARD_STARTUP_TIMEOUT_S="180",
        RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT="180",
        **(FAST_NODE_DEATH if fast_node_death else {}),
    )
    cmd = [
        ray_cli(),
        "start",
        "--head",
        f"--port={gcs}",
        f"--num-cpus={head_cpus}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--disable-usage-stats",
        f"--include-dashboard={str(dashboard).lower()}",
        f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
    ]
    if head_resources:
        cmd.append(f"--resources={json.dumps(head_resources)}")
    starter = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )  # its pgid = its pid, inherited by the daemons
    cluster = LocalCluster(
        temp_dir,
        f"127.0.0.1:{gcs}",
        f"http://127.0.0.1:{dash}",
        env,
        [Node("head", starter.pid, head_resources or {}, marker=temp_dir)],
        with_dashboard=dashboard,
    )
    survivors: list[int] = []
    try:
        out, _ = starter.communicate(timeout=240)
        assert starter.returncode == 0, f"ray start failed:\n{out[-3000:]}"
        yield cluster
    finally:
        if starter.poll() is None:
            starter.kill()
        survivors = cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not survivors, f"Ray processes survived SIGKILL: {survivors}"


def node_of_actors(class_name: str) -> dict[str, Any]:
    """node id -> number of alive actors of a class (Ray's state API; the head runs the dashboard)."""
    from ray.util.state import list_actors

    counts: dict[str, Any] = {}
    for actor in list_actors(filters=[("class_name", "=", class_name)], limit=1000):
        counts[actor.node_id] = counts.get(actor.node_id, 0) + (actor.state == "ALIVE")
    return counts
