"""The everyday commands on a finished output: wall time, and whether each imported torch or Ray.

Each command runs as `python -m ray_wsis ...` in a fresh subprocess (what a user types), timed
from start to exit; a probe wrapped around it reports whether torch and Ray were in
``sys.modules`` at its end. The output must be finished (every stage done), e.g. the demo's:

    .venv/bin/ray-wsis demo --set output=/tmp/cli_demo      # once, ~6 min on 2 cores
    python bench/cli.py --output /tmp/cli_demo [--repeat 3]

Targets (issue 25, a 2-core machine, idle): status and config show under 2 s, a run with nothing
to do under 5 s, export under 5 s for 240 images. Prints one JSON line (the best of --repeat runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROBE = """
import runpy, sys
sys.argv = ["ray-wsis", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("ray_wsis", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
print("IMPORTED " + ",".join(m for m in ("torch", "ray") if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def timed(args: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ}
    )
    seconds = time.perf_counter() - start
    probe = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED ")]
    heavy = probe[-1][len("IMPORTED ") :].split(",") if probe and probe[-1] != "IMPORTED " else []
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        "torch": "torch" in heavy,
        "ray": "ray" in heavy,
        "stdout_tail": done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="/tmp/cli_demo", help="a finished output (e.g. the demo's)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command; the best is reported")
    args = parser.parse_args()
    from bench.common import machine

    output = args.output
    config = os.path.join(output, "config.yaml")
    if not os.path.exists(config):
        raise SystemExit(f"{output} has no config.yaml: make a finished output first (see the docstring)")
    with tempfile.TemporaryDirectory() as scratch:
        commands = {
            "status": ["status", output],
            "status --json": ["status", output, "--json"],
            "config show": ["config", "show", "--config", config],
            "export --format coco": [
                "export",
                "--labels",
                output,
                "--format",
                "coco",
                "--out",
                os.path.join(scratch, "labels.json"),
            ],
            "run (nothing to do)": ["run", "--config", config],
        }
        results: dict[str, Any] = {}
        for name, command in commands.items():
            runs = [timed(command) for _ in range(max(1, args.repeat))]
            best = min(runs, key=lambda r: r["seconds"])
            results[name] = {k: v for k, v in best.items() if k != "stdout_tail"}
            if name.startswith("export"):
                results[name]["result"] = best["stdout_tail"]
    images = None
    with open(os.path.join(output, "stages", "cut-labels.json")) as f:
        images = json.load(f).get("inputs_count")
    targets = {"status": 2.0, "status --json": 2.0, "config show": 2.0, "export --format coco": 5.0}
    targets["run (nothing to do)"] = 5.0
    print(
        json.dumps(
            {
                "bench": "cli",
                "output": output,
                "images": images,
                "machine": machine(),
                "load_average": os.getloadavg(),
                "commands": results,
                "targets_s": targets,
                "within_targets": all(results[k]["seconds"] < t for k, t in targets.items()),
            }
        )
    )


if __name__ == "__main__":
    main()
