"""The test tree never shadows an importable package.

transformers >= 5.25 imports Hugging Face's ``kernels`` package on every model load; a ``tests/kernels``
package that pytest had put on ``sys.path`` was found first and broke every test. Test folders have no
``__init__.py`` and pytest imports them with ``--import-mode=importlib``, so nothing under ``tests/`` lands on
``sys.path``; these tests fail if either ever changes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_folder_is_a_package():
    assert sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob("__init__.py")) == []


def test_no_test_folder_is_on_sys_path():
    folders = {TESTS, *(p for p in TESTS.rglob("*") if p.is_dir())}
    on_path = [entry for entry in sys.path if entry and Path(entry).resolve() in folders]
    assert on_path == []


def test_names_in_the_test_tree_resolve_outside_it():
    """Every top-level name in tests/ (a folder or a module) imports from elsewhere, if at all."""
    names = {p.stem for p in TESTS.iterdir() if p.is_dir() or p.suffix == ".py"} | {"kernels", "calibrate"}
    for name in sorted(names - {"__pycache__"}):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None and spec.origin else ""
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for where in [origin, *locations]:
            assert not where or TESTS not in Path(where).resolve().parents, (name, where)
