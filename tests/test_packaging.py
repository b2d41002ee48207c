"""The wheel: only the `svlm` top-level package, with calibrate/, callbacks/ and configs/ mapped inside it.

Builds from a copy of the sources so stale ``build/`` output in the checkout cannot leak into the wheel.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> its place in the wheel (pyproject.toml [tool.setuptools] package-dir).
MAPPED = {
    "svlm": "svlm",
    "calibrate": "svlm/calibrate",
    "callbacks": "svlm/callbacks",
    "configs": "svlm/configs",
}
SHIPPED_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".txt", ".safetensors", ".typed", ".jinja"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for item in ROOT.iterdir():
        if item.is_file():
            shutil.copy2(item, src / item.name)
    for folder in MAPPED:
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"wheel build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    (built,) = out.glob("svlm-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _expected_files() -> dict[str, str]:
    """Wheel path -> source path for every file the sources ship."""
    expected = {}
    for folder, target in MAPPED.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in SHIPPED_SUFFIXES and "__pycache__" not in path.parts:
                inside = path.relative_to(ROOT / folder).as_posix()
                expected[f"{target}/{inside}"] = path.relative_to(ROOT).as_posix()
    return expected


def test_only_svlm_at_top_level(wheel_names):
    top = {name.split("/")[0] for name in wheel_names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"svlm"}, (
        f"unexpected top-level entries in the wheel: {sorted(top - dist_info)}"
    )


def test_mapped_packages_inside_svlm(wheel_names):
    for name in (
        "svlm/__init__.py",
        "svlm/py.typed",
        "svlm/calibrate/__init__.py",
        "svlm/callbacks/__init__.py",
    ):
        assert name in wheel_names


def test_every_source_file_is_shipped(wheel_names):
    missing = {wheel: src for wheel, src in _expected_files().items() if wheel not in wheel_names}
    packages = sorted({str(Path(w).parent).replace("/", ".") for w in missing})
    assert not missing, (
        f"files missing from the wheel: {sorted(missing.values())}; add {packages} to "
        "[tool.setuptools] packages in pyproject.toml (and give each folder an __init__.py)"
    )


def test_console_script(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = zf.read(name).decode()
    assert "[console_scripts]" in entry_points
    assert "svlm = svlm.cli:main" in entry_points


def test_wheel_imports(wheel: Path, tmp_path: Path):
    """Unpacked (= installed) wheel: the mapped packages import from inside svlm/, configs are resources."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = (
        "import importlib.resources, svlm.calibrate, svlm.callbacks, svlm.configs;"
        "print(svlm.calibrate.__file__); print(svlm.callbacks.__file__);"
        "print(importlib.resources.files('svlm.configs').joinpath('__init__.py').is_file())"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    calibrate, callbacks, has_configs = result.stdout.split()
    assert Path(calibrate) == site / "svlm" / "calibrate" / "__init__.py"
    assert Path(callbacks) == site / "svlm" / "callbacks" / "__init__.py"
    assert has_configs == "True"


@pytest.mark.parametrize("module", ["svlm.calibrate", "svlm.callbacks", "svlm.configs"])
def test_installed_mapping_imports(module):
    """The editable install maps the top-level folders into `svlm` too."""
    mod = importlib.import_module(module)
    folder = module.split(".")[1]
    assert Path(mod.__file__).resolve().parent == ROOT / folder
