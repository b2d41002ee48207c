"""What the Makefile targets install (dry runs: `make -n` prints the commands without running them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _makefile_variables() -> set[str]:
    """The Makefile's overridable variables (``NAME ?= default``)."""
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*\?=", text, flags=re.M))


def _dry_run(target: str, venv: Path) -> str:
    # Under `make test` (CI) the outer make's variables would add "make[1]: Entering directory" lines, and
    # under `make test-latest` its command-line `CONSTRAINTS=` reaches this process's environment: the
    # defaults are what is tested, so neither is passed on.
    dropped = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"} | _makefile_variables()
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_only_make_test_installs_the_kernel_extra(tmp_path):
    """triton (~290 MB) only serves the interpreter tests of the kernels: `make demo` on a fresh machine
    never downloads it; every install stays pinned by the constraints."""
    demo = _dry_run("demo", tmp_path / "venv")
    assert "triton" not in demo.replace(str(tmp_path), "")
    assert '-c constraints.txt -e ".[dev]"' in demo
    assert "bin/svlm test --config configs/demo.yaml" in demo.rstrip().splitlines()[-1]
    test = _dry_run("test", tmp_path / "venv")
    assert '-c constraints.txt -e ".[triton]"' in test
    assert test.index(".[triton]") < test.index("bin/pytest")
