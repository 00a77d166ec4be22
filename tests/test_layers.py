"""The import contracts of pyproject.toml ([tool.importlinter], run by `make check`) hold, and can fail.

Each case copies the package into a temporary folder, adds one import that the layering forbids,
and runs lint-imports there: the contract must name that import. The unchanged copy must pass,
so a contract that no longer matches the code (or an ignore that matches nothing) fails here too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), "import-linter is missing: it is one of the test extras (pip install -e .[test])"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
    )


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml that lint-imports reads instead of the repo's."""
    shutil.copytree(ROOT / "ray_wsis", tmp_path / "ray_wsis", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_code_keeps_every_contract(tree: Path):
    done = _lint(tree)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "named"),
    [
        (  # a stage reaching into another stage for a helper
            "stages/calibrate.py",
            "from ray_wsis.stages.evaluate import eval_cams  # noqa",
            "ray_wsis.stages.calibrate -> ray_wsis.stages.evaluate",
        ),
        (  # the math layer reading the pipeline's schemas (upward); inside a function it counts too
            "method/scores.py",
            "def _late():\n    from ray_wsis.pipeline.schema import walk_scores  # noqa",
            "ray_wsis.method.scores -> ray_wsis.pipeline.schema",
        ),
        (  # the pipeline machinery driving stages (upward, and a cycle)
            "pipeline/layout.py",
            "from ray_wsis.stages import base  # noqa",
            "ray_wsis.pipeline.layout -> ray_wsis.stages.base",
        ),
        (  # the two synthetic sets importing each other
            "data/synthetic_scenes.py",
            "from ray_wsis.data import synthetic  # noqa",
            "No cycles are allowed in ray_wsis.data",
        ),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tree: Path, module: str, line: str, named: str):
    _append(tree / "ray_wsis" / module, line)
    done = _lint(tree)
    assert done.returncode != 0, done.stdout[-3000:]
    assert named in done.stdout, done.stdout[-3000:]


def test_a_new_top_level_module_must_be_placed_in_a_layer(tree: Path):
    (tree / "ray_wsis" / "shortcuts.py").write_text('"""A module no layer names."""\n')
    done = _lint(tree)
    assert done.returncode != 0 and "ray_wsis.shortcuts" in done.stdout, done.stdout[-3000:]
