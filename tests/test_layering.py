"""The import-linter contracts in pyproject.toml hold, and break when a layer is crossed.

``lint-imports`` runs on a copy of the packages and of pyproject.toml, once unchanged and once with
one forbidden import added, so that a contract that could never fail (a misspelt module, a
package-wide exemption) shows up here rather than as a green CI step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
CORE_CONTRACT = "The core imports neither the service nor the benchmarks"
SERVING_CONTRACT = "The serving path imports no torch"


def _lint_imports() -> str:
    # The venv's scripts folder first: pytest may run with the venv's python but not its PATH.
    found = shutil.which(
        "lint-imports", path=os.pathsep.join([str(Path(sys.executable).parent), os.defpath])
    ) or shutil.which("lint-imports")
    if found is None:
        pytest.skip("lint-imports is not installed (pip install -e '.[dev]' brings import-linter)")
    return found


@pytest.fixture(scope="module")
def lint_imports() -> str:
    return _lint_imports()


def _copy(tmp_path: Path) -> Path:
    """The packages and pyproject.toml (whose [tool.importlinter] holds the contracts)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("ciess_core", "service"):
        shutil.copytree(REPOSITORY / package, tmp_path / package, ignore=ignore)
    shutil.copy(REPOSITORY / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _run(lint_imports: str, root: Path) -> subprocess.CompletedProcess[str]:
    # The copy first on the path, so that it, not the editable install, is what gets analysed.
    environment = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [lint_imports, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_unchanged_packages_keep_every_contract(lint_imports: str, tmp_path: Path) -> None:
    result = _run(lint_imports, _copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CORE_CONTRACT} KEPT" in result.stdout
    assert f"{SERVING_CONTRACT} KEPT" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract", "chain"),
    [
        ("ciess_core/errors.py", "import service.settings", CORE_CONTRACT, "-> service.settings"),
        ("ciess_core/sizes.py", "import bench.paper", CORE_CONTRACT, "ciess_core.sizes -> bench"),
        (
            "ciess_core/artifact/ragged.py",
            "import torch",
            SERVING_CONTRACT,
            "ciess_core.artifact.ragged -> torch",
        ),
    ],
    ids=["core-imports-service", "core-imports-bench", "serving-path-imports-torch"],
)
def test_a_forbidden_import_breaks_its_contract(
    lint_imports: str, tmp_path: Path, module: str, statement: str, contract: str, chain: str
) -> None:
    root = _copy(tmp_path)
    source = root / module
    source.write_text(source.read_text() + f"\n{statement}  # noqa\n")
    result = _run(lint_imports, root)
    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout
    assert chain in result.stdout
