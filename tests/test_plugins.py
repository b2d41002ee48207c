"""Strategies written outside svlm reach the CLI: `--import`, the project folder, entry points, labels."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import svlm
from svlm import plugins
from svlm.cli import main, pop_imports
from svlm.module import expand_points
from svlm.strategies.registry import STRATEGIES

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

# A strategy as a researcher writes it in their own project: keep the visual tokens of largest L2 norm.
USER_MODULE = '''
import svlm


@svlm.register_strategy("{name}")
class {cls}(svlm.Strategy):
    """Keep the visual tokens whose input embeddings have the largest L2 norm, before the LLM."""

    def prune_layers(self, ctx):
        return [-1]

    def select(self, ctx, view):
        keep_n = self.target_tokens(ctx)
        return svlm.Selection(keep=svlm.keep_top_visual(view, view.hidden.norm(dim=-1), keep_n))
'''


def _user_module(folder: Path, module: str, name: str, cls: str) -> None:
    (folder / f"{module}.py").write_text(USER_MODULE.format(name=name, cls=cls))


def test_user_strategies_run_through_the_cli_from_the_project_folder(tmp_path):
    """`--import` finds a module of the folder `svlm` runs in, without PYTHONPATH; a class path from that
    folder works too; points are labelled with the registered names."""
    project = tmp_path / "project"
    project.mkdir()
    _user_module(project, "mystrats", "l2norm", "L2Norm")
    _user_module(project, "otherstrats", "topnorm", "TopNorm")
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False},
        "model": {
            "model": "tiny:llava",
            "max_new_tokens": 1,
            "strategies": [
                "dense",
                {"strategy": "l2norm", "budget": 0.5},
                {"strategy": "otherstrats.TopNorm", "budget": 0.25},
            ],
        },
        "data": {"benchmark": "shapes", "limit": 2, "batch_size": 2, "image_size": 64},
        "tradeoff": {"plot": False},
    }
    (project / "run.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    svlm_script = Path(sys.executable).with_name("svlm")
    command = [str(svlm_script), "test", "--import", "mystrats", "--config", "run.yaml"]
    command += ["--trainer.default_root_dir", "out"]
    proc = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(project / "out" / "tradeoff.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["dense", "l2norm-0.5", "topnorm-0.25"]
    assert float(rows[1]["budget"]) < float(rows[0]["budget"])


def test_unknown_user_strategy_names_the_ways_to_load_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"model": "tiny:llava", "strategies": ["l2norm_nowhere"]}}))
    assert main(["test", "--config", str(config)]) == 2
    assert "--import your.module" in capsys.readouterr().err


def test_import_option(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SVLM_IMPORT", "")  # main() sets it: restored (removed) after the test
    _user_module(tmp_path, "svlm_user_plugin_a", "user_plugin_a", "UserPluginA")
    try:
        assert main(["strategies", "--import=svlm_user_plugin_a"]) == 0
        assert re.search(r"^user_plugin_a +Keep the visual tokens whose", capsys.readouterr().out, re.M)
        assert os.environ["SVLM_IMPORT"] == "svlm_user_plugin_a"  # for the processes a DDP run starts
    finally:
        STRATEGIES.unregister("user_plugin_a")
    monkeypatch.setenv("SVLM_IMPORT", "")
    assert main(["strategies", "--import", "no_such_module_xyz"]) == 1
    assert "Cannot import module 'no_such_module_xyz' given with --import" in capsys.readouterr().err
    assert main(["test", "--import"]) == 2
    assert pop_imports(["--import", "a,b", "test", "--import=c", "--x", "1"]) == (
        ["test", "--x", "1"],
        ["a,b", "c"],
    )


def test_import_environment_variable(tmp_path, monkeypatch, capsys):
    """SVLM_IMPORT=a,b works like --import (a DDP worker reruns the command line without --import)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    _user_module(tmp_path, "svlm_user_plugin_b", "user_plugin_b", "UserPluginB")
    monkeypatch.setenv("SVLM_IMPORT", "svlm_user_plugin_b")
    try:
        assert main(["strategies"]) == 0
        assert "user_plugin_b" in capsys.readouterr().out
    finally:
        STRATEGIES.unregister("user_plugin_b")


def _dist(site: Path, name: str, entries: dict[str, str]) -> None:
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\n{lines}\n")


def test_entry_point_plugins_are_loaded_on_lookup(tmp_path, monkeypatch):
    """An installed package's `svlm.strategies` entry points: a module entry registers on import, a class
    entry is registered under the entry's name."""
    site = tmp_path / "site"
    site.mkdir()
    _user_module(site, "svlm_ep_module", "ep_module_norm", "EpModuleNorm")
    (site / "svlm_ep_classes.py").write_text(
        USER_MODULE.format(name="unused", cls="Unused").replace('@svlm.register_strategy("unused")\n', "")
    )
    _dist(site, "svlm-ep-demo", {"anything": "svlm_ep_module", "ep_class_norm": "svlm_ep_classes:Unused"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_loaded", {})
    try:
        names = svlm.available_strategies()
        assert {"ep_module_norm", "ep_class_norm"} <= set(names)
        assert type(svlm.build_strategy("ep_class_norm", budget=8)).__name__ == "Unused"
    finally:
        STRATEGIES.unregister("ep_module_norm")
        STRATEGIES.unregister("ep_class_norm")


def test_broken_entry_point_names_itself(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _dist(site, "svlm-broken", {"broken": "svlm_no_such_module_q"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_loaded", {})
    with pytest.raises(plugins.PluginError, match="plug-in 'broken' = 'svlm_no_such_module_q'"):
        svlm.available_strategies()


def test_cwd_is_appended_to_sys_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    plugins.add_cwd_to_path()
    assert sys.path[-1] == str(tmp_path)
    plugins.add_cwd_to_path()
    assert sys.path.count(str(tmp_path)) == 1


def test_labels_use_the_registered_name():
    labels = [p.label for p in expand_points([{"strategy": "svlm.strategies.fastv.FastV", "budget": [96]}])]
    assert labels == ["fastv-96"]

    module = types.ModuleType("svlm_user_labels")

    class Unregistered(svlm.strategies.fastv.FastV):  # inherits a registered name, is not registered
        pass

    module.Unregistered = Unregistered
    sys.modules[module.__name__] = module
    try:
        assert expand_points([{"strategy": "svlm_user_labels.Unregistered", "budget": 8}])[0].label == (
            "Unregistered-8"
        )
    finally:
        del sys.modules[module.__name__]


def test_layer_view_documents_every_field():
    import dataclasses

    doc = svlm.LayerView.__doc__ or ""
    missing = [f.name for f in dataclasses.fields(svlm.LayerView) if f"    {f.name}: " not in doc]
    assert missing == []


def test_import_leaves_no_environment_behind():
    """Runs after the tests above: what main() put into SVLM_IMPORT for them was taken out again."""
    assert os.environ.get("SVLM_IMPORT", "") == ""
