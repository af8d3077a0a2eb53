"""The library's layers (import-linter contracts in pyproject.toml): imports point down, no cycles.

The contracts are checked on the real package, and shown to fail on a copy of it with one import
added against them: the two violations the layout had before it was layered (config <-> registry,
data importing a training utility), an upward import of the config layer, and a cycle inside a package.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (pip install -e '.[dev]')")


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the `diffuser` package under `root`, with the contracts of `root`/pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}  # ahead of the installed (editable) package
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers_and_has_no_cycles():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "added_import", "reported"),
    [
        # the cycle the layout had: config imported the registry, which imported ConfigError from config
        ("registry.py", "from diffuser.config import SECTIONS", "diffuser.registry is not allowed to import diffuser.config"),
        # data imported a training utility while the trainers imported data
        ("datasets/generate.py", "from diffuser.training.metrics import MetricsLogger",
         "diffuser.datasets is not allowed to import diffuser.training"),
        # the online trainer imported ConfigError from the config layer
        ("training/online/trainer.py", "from diffuser.config import ConfigError",
         "diffuser.training is not allowed to import diffuser.config"),
        # a cycle inside one package (diffusion_rl imports vae)
        ("models/vae.py", "import diffuser.models.diffusion_rl", "No cycles are allowed in diffuser.models"),
    ],
)
def test_an_import_against_the_layers_fails_the_check(tmp_path, module, added_import, reported):
    shutil.copytree(ROOT / "diffuser", tmp_path / "diffuser", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "diffuser" / module, "a") as f:
        f.write(f"\n{added_import}\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert reported in result.stdout, result.stdout
