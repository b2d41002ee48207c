"""Every shell command block of the README runs, as written, on small data.

Each ```bash block either runs here (in a fresh folder holding a link to ``configs/``, commands in order, with
the small-data overrides of :data:`SVLM_SMALL` / :data:`MODULE_RULES` appended) or is preceded by a marker
``<!-- readme-test: skip (reason) -->`` saying why it cannot (a GPU, real checkpoints, the network, an hour
of training). A command that has no rule here fails the test until it gets one or its block gets a marker.
"""

from __future__ import annotations

import re
import runpy
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from svlm.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console", "zsh")
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>.*\S.*)\)\s*-->")

#: Appended to ``svlm <subcommand>`` commands (a later flag wins): a few samples, one thread, one epoch.
SVLM_SMALL: dict[str, list[str]] = {
    "test": ["--data.limit", "2", "--model.cpu_threads", "1"],
    "fit": [
        "--data.train_limit",
        "2",
        "--data.limit",
        "2",
        "--data.batch_size",
        "2",
        "--trainer.max_epochs",
        "1",
    ],
    "strategies": [],
}


def _small_compare(args: list[str]) -> list[str]:
    return [*args, "--limit", "2", "--batch-size", "2"]


def _dry_run_only(args: list[str]) -> list[str]:
    """A replay's dry run only; paths into the package (``svlm/zoo/...``) are read from this checkout."""
    assert "--dry-run" in args, "only the dry run of a replay runs in the tests: mark the block of a full one"
    return [str(ROOT / a) if a.startswith("svlm/") else a for a in args]


def _smoke_only(args: list[str]) -> list[str]:
    assert "--smoke" in args, "only the --smoke training runs in the tests: mark the block of a full run"
    return args


#: ``python -m <module>`` commands the tests run, with how to make each small.
MODULE_RULES: dict[str, Callable[[list[str]], list[str]]] = {
    "svlm": lambda args: args,
    "svlm.calibrate.compare": _small_compare,
    "svlm.diagnostics.raters": _small_compare,
    "svlm.diagnostics.evidence_attention": _small_compare,
    "svlm.zoo.train_default": _smoke_only,
    "svlm.zoo.recipe.replay": _dry_run_only,
}


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    skip: str | None  # the marker's reason


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        marker = MARKER.search(before)
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, match.group(1), match.group(2), marker.group("reason") if marker else None))
    return blocks


def shell_blocks() -> list[Block]:
    return [b for b in readme_blocks() if b.language in SHELL_LANGUAGES]


def commands(block: Block) -> list[list[str]]:
    """The block's commands as argument lists (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", block.text)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _remap(arg: str, folder: Path) -> str:
    """Absolute scratch paths (``/tmp/smoke``) move into the test's folder."""
    return str(folder / arg.removeprefix("/tmp/")) if arg.startswith("/tmp/") else arg


SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<", "&"}


def missing_rule(argv: list[str]) -> str | None:
    """Why this test cannot run a command (``None``: it can)."""
    program = Path(argv[0]).name
    if SHELL_OPERATORS & set(argv) or any(a.startswith("$") for a in argv):
        return "shell operators or variables"
    if program == "svlm":
        subcommand = argv[1] if len(argv) > 1 else ""
        return None if subcommand in SVLM_SMALL else f"no small-data rule for `svlm {subcommand}`"
    if program in ("python", "python3") and argv[1:2] == ["-m"] and len(argv) > 2:
        return None if argv[2] in MODULE_RULES else f"no rule for `python -m {argv[2]}`"
    return f"no rule for `{program}`"


def run_command(argv: list[str], folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run one README command in-process (an extra interpreter would cost ~8 s of imports each).

    Returns its exit code and the command as run."""
    problem = missing_rule(argv)
    assert problem is None, f"cannot run `{shlex.join(argv)}`: {problem}; add a rule to {__file__} or mark it"
    argv = [_remap(a, folder) for a in argv]
    if Path(argv[0]).name == "svlm":
        args = [*argv[1:], *SVLM_SMALL[argv[1]]]
        shown = f"svlm {shlex.join(args)}"
        monkeypatch.setattr(sys, "argv", ["svlm"])
        try:
            return main(args), shown
        except SystemExit as exit_:  # --help, --print_config
            return int(exit_.code or 0), shown
    module = argv[2]
    args = MODULE_RULES[module](argv[3:])
    shown = f"python -m {module} {shlex.join(args)}"
    monkeypatch.setattr(sys, "argv", [module, *args])
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        return (exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1), shown
    return 0, shown


def test_every_shell_block_runs_or_says_why_not():
    blocks = shell_blocks()
    assert len(blocks) >= 8
    for block in blocks:
        if block.skip is not None:
            assert len(block.skip.split()) >= 2, f"README line {block.line}: say why the block is not run"
            continue
        for argv in commands(block):
            problem = missing_rule(argv)
            assert problem is None, (
                f"README line {block.line}: `{shlex.join(argv)}`: {problem}; mark the block"
            )
    other = {b.language for b in readme_blocks()} - {*SHELL_LANGUAGES, "python", "yaml"}
    assert other == set(), f"code blocks of unknown language {other}: tell this test how to check them"


def test_make_demo_is_the_command_line_run():
    """`make demo` (a skipped block) runs exactly the first command of the Command line block (replacing an
    earlier demo run: `--overwrite true`)."""
    recipe = re.search(r"^demo:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None
    command = recipe.group(1).partition("#")[0].strip()
    assert command == "$(BIN)/svlm test --config configs/demo.yaml --overwrite true"
    ran = [argv for b in shell_blocks() if b.skip is None for argv in commands(b)]
    assert ["svlm", "test", "--config", "configs/demo.yaml"] in ran


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize(
    "block", [b for b in shell_blocks() if b.skip is None], ids=lambda b: f"line{b.line}"
)
def test_readme_block_runs(block, tmp_path, monkeypatch, capsys):
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI appends the current folder
    threads = torch.get_num_threads()
    try:
        for argv in commands(block):
            capsys.readouterr()
            start = time.perf_counter()
            code, shown = run_command(argv, tmp_path, monkeypatch)
            out = capsys.readouterr()
            seconds = time.perf_counter() - start
            allowed = (0, 1) if "--check" in argv else (0,)  # a failed acceptance check is a result
            assert code in allowed, f"README line {block.line}: `{shown}` exited {code}:\n{out.err[-3000:]}"
            assert "Traceback" not in out.err, f"`{shown}`:\n{out.err[-3000:]}"
            print(f"{seconds:6.1f} s  {shown}")
            if argv[:3] == ["python", "-m", "svlm"] and "--help" in argv:
                assert out.out.startswith("usage: svlm ")
    finally:
        torch.set_num_threads(threads)
