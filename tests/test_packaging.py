"""The distribution installs one import root, ``bench``: models/ and datasets/ live under it, configs ship
inside."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of the sources alone: an in-tree build/ folder left by an earlier build would put
    # stale modules into the wheel and hide a package missing from pyproject.toml
    source = tmp_path_factory.mktemp("source") / "matgenbench"
    skip = {"build", "dist", "outputs", "leaderboard", "tests", ".git", ".venv", ".cache"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == REPO_ROOT
        return {n for n in names if (top and n in skip) or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO_ROOT, source, ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
           str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{result.stderr[-3000:]}")
    (path,) = out.glob("matgenbench-*.whl")
    return path


def test_wheel_has_one_import_root(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("matgenbench-")}
    assert top == {"bench"}, f"unexpected top-level entries in the wheel: {sorted(top)}"
    for needed in ("bench/models/__init__.py", "bench/datasets/__init__.py", "bench/datasets/codec.py",
                   "bench/conf/config.yaml", "bench/conf/dataset/perov_5.yaml", "bench/conf/model/ddpm.yaml",
                   "bench/conf/trainer/cpu.yaml", "bench/metrics/data/cdvae_comp_scaler.json",
                   "bench/metrics/data/smact_2_2_1_oxidation_states.json"):
        assert needed in names, f"{needed} missing from the wheel"


def test_wheel_ships_every_source_module_and_config(wheel: Path) -> None:
    """A sub-package missing from pyproject's package list installs in editable mode and breaks a regular
    install: every module and config of the tree must be in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    roots = {"bench": "bench", "models": "bench/models", "datasets": "bench/datasets", "conf": "bench/conf"}
    missing = []
    for source, installed in roots.items():
        for path in (REPO_ROOT / source).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                rel = path.relative_to(REPO_ROOT / source).as_posix()
                if f"{installed}/{rel}" not in names:
                    missing.append(f"{source}/{rel}")
    assert not missing, f"in the tree but not in the wheel (add the package to pyproject.toml): {missing}"


def test_installed_copy_imports_and_composes(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a regular (non-editable) install is the unpacked wheel
    code = (
        "import bench, bench.models, bench.datasets, bench.conf, sys;"
        "assert 'site' in bench.models.__file__, bench.models.__file__;"
        "from bench.datasets.codec import CrystalCodec;"
        "from bench.config import compose;"
        "cfg = compose(['model=vae', 'dataset=carbon_24']);"
        "print(cfg.model.name, cfg.dataset.name)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["vae", "carbon_24"]


def test_editable_install_imports_under_bench() -> None:
    import bench.datasets
    import bench.models

    assert Path(bench.models.__file__).parent.name == "models"
    assert Path(bench.datasets.__file__).parent.name == "datasets"
    assert "datasets" not in sys.modules or not hasattr(sys.modules["datasets"], "codec")
