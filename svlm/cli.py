"""The ``svlm`` command line: LightningCLI subcommands plus two small helpers.

    svlm test --config configs/demo.yaml          # evaluate a list of strategy points -> results/demo/
    svlm test --config configs/demo.yaml --data.limit 16 --model.max_new_tokens 8
    svlm fit --config configs/calib.yaml           # calibrate SparseVLM -> results/calib/schedule.yaml
    svlm strategies                                # registered strategies, one line each
    svlm bench --config configs/bench.yaml         # latency + FLOPs of strategies on synthetic inputs

``fit``/``validate``/``test``/``predict`` are Lightning's; ``strategies`` and ``bench`` are dispatched before
LightningCLI sees the arguments (litgpt's habit of mapping subcommands to plain functions).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from svlm.bench import bench, bench_parser
from svlm.module import VLMEvaluator, build_point_strategy, expand_points
from svlm.results import format_table

__all__ = ["SVLMCLI", "bench", "format_points", "main", "parse_config", "strategies_table"]

HELPERS_HELP = (
    "Helpers: `svlm strategies` lists the registered pruning strategies; `svlm bench --help` measures "
    "latency and FLOPs of strategies on synthetic inputs. `--import MODULE` (any subcommand, repeatable) "
    "imports a module of yours that registers strategies; modules of the current folder import as they are."
)


class _DropLightningTips(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: ... try installing litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_TIPS_FILTER = _DropLightningTips()


def quiet_third_party() -> None:
    """Silence messages of the libraries svlm runs on that say nothing about the run: Lightning's install
    tips and its use of torch's deprecated ``LeafSpec`` (a ``FutureWarning`` from Lightning's own code)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _TIPS_FILTER not in rank_zero.filters:
        rank_zero.addFilter(_TIPS_FILTER)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


def _datamodule_class() -> type:
    from svlm.data import VLMDataModule

    return VLMDataModule


#: LightningModule of the subcommands that do not evaluate: ``fit`` calibrates a pruning schedule.
SUBCOMMAND_MODELS: dict[str, str] = {"fit": "svlm.calibrate.RankCalibrator"}


def subcommand_model(subcommand: str | None) -> type:
    """The LightningModule class ``svlm <subcommand>`` instantiates (:class:`VLMEvaluator` unless listed in
    :data:`SUBCOMMAND_MODELS`)."""
    path = SUBCOMMAND_MODELS.get(subcommand or "")
    if path is None:
        return VLMEvaluator
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class SVLMCLI(LightningCLI):
    """LightningCLI for :class:`svlm.module.VLMEvaluator` and :class:`svlm.data.VLMDataModule`.

    Adds a :class:`svlm.callbacks.TradeoffCurve` under the ``tradeoff`` key (always on: every run writes its
    trade-off table into ``trainer.default_root_dir``), links ``data.benchmark`` to ``model.benchmark``, and
    builds every strategy point once at parse time so a bad name or argument fails before any model loads.
    ``parse_only=True`` stops after parsing and validation (no seeding, no instantiation): see
    :func:`parse_config`.
    """

    def __init__(self, *args: Any, parse_only: bool = False, **kwargs: Any) -> None:
        self.parse_only = parse_only
        quiet_third_party()
        self.run_folder: Any = None  # svlm.run_folder.RunFolder of a test/validate/fit run
        self.run_dir: str | None = None
        given = kwargs.get("args", args[3] if len(args) > 3 else None)
        self._argv = list(sys.argv[1:] if given is None else given) if not isinstance(given, dict) else []
        kwargs.setdefault("model_class", VLMEvaluator)
        kwargs.setdefault("datamodule_class", _datamodule_class())
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        parser_kwargs.setdefault("description", f"svlm: training-free visual-token pruning. {HELPERS_HELP}")
        parser_kwargs.setdefault("prog", "svlm")  # not `__main__.py` under `python -m svlm`
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from svlm.callbacks import TradeoffCurve

        parser.add_lightning_class_args(TradeoffCurve, "tradeoff")
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="Replace an earlier run in the run folder (trainer.default_root_dir); without it svlm "
            "refuses to write into a folder holding another run unless resuming it.",
        )
        if "benchmark" in inspect.signature(self._datamodule_class).parameters:
            parser.link_arguments("data.benchmark", "model.benchmark", apply_on="parse")

    def _model_for(self, subcommand: str | None) -> type:
        """The module ``subcommand`` instantiates, unless the caller chose one (``model_class=``)."""
        return subcommand_model(subcommand) if self.model_class is VLMEvaluator else self.model_class

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        evaluator, self._model_class = self._model_class, self._model_for(subcommand)
        try:
            return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        finally:
            self._model_class = evaluator

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        self._model_class = self._model_for(self.config.get("subcommand"))  # instantiation uses it

    def _set_seed(self) -> None:
        if not self.parse_only:
            super()._set_seed()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        from svlm.callbacks import TradeoffCurve

        sections = {"model": self._model_class, "data": self._datamodule_class, "tradeoff": TradeoffCurve}
        checks: list[tuple[str, Callable[[], None]]] = [
            ("", lambda: check_empty_values(config, sections)),
            ("model.strategies: ", lambda: validate_points(config)),
            ("tradeoff.metric: ", lambda: check_tradeoff_metric(config)),
        ]
        for prefix, check in checks:
            try:
                check()
            except ValueError as err:
                if self.parse_only:
                    raise
                self._parser(self.subcommand).error(f"{prefix}{err}")  # usage + message, exit 2
        if not self.parse_only and self.subcommand in RUN_SUBCOMMANDS:
            self.run_dir = run_folder_path(config)
            if not _secondary_process():  # DDP: only the first process guards the folder
                self.run_folder = open_run_folder(self.subcommand, config, self._argv)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, logging into the run folder (a CSVLogger unless the config names a logger) and
        guarded by :class:`svlm.run_folder.RunFolderCallback`."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        if self.run_dir is not None and trainer_config.get("logger") in (None, True):
            from lightning.pytorch.loggers import CSVLogger

            kwargs.setdefault("logger", CSVLogger(str(self.run_dir), name="", version=""))
        if self.run_folder is not None:
            from svlm.run_folder import RunFolderCallback

            callbacks = list(kwargs.pop("callbacks", None) or trainer_config.get("callbacks") or [])
            kwargs["callbacks"] = [*callbacks, RunFolderCallback(self.run_folder)]
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        if self.parse_only:
            return
        try:
            super().instantiate_classes()
        except BaseException as err:  # a bad setting of a class: the run folder goes back as it was
            if self.run_folder is not None:
                from svlm.run_folder import stop

                stop(self.run_folder, err)
                self.run_folder.release()
            raise

    def _run_subcommand(self, subcommand: str) -> None:
        if self.parse_only:
            return
        if self.run_folder is None:
            super()._run_subcommand(subcommand)
            return
        from svlm.run_folder import stop

        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            stop(self.run_folder, err)
            raise
        else:
            stop(self.run_folder, None)
        finally:
            self.run_folder.release()

    def after_test(self) -> None:
        points = getattr(self.model, "points", None)
        if points and self.trainer.is_global_zero:
            print(format_points(points))
            print(f"results: {Path(self.trainer.default_root_dir).resolve()}")


#: Subcommands whose outputs go to a guarded run folder (see :mod:`svlm.run_folder`).
RUN_SUBCOMMANDS: frozenset[str] = frozenset({"test", "validate", "fit"})


def _secondary_process() -> bool:
    """A process that a DDP launcher started for rank > 0 (Lightning's launcher sets these variables)."""
    return any(int(os.environ.get(key) or 0) != 0 for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def run_folder_path(config: Any) -> str:
    """The run folder: ``trainer.default_root_dir`` (the working directory when unset), derived once."""
    trainer = _plain(config.get("trainer")) or {}
    return str(trainer.get("default_root_dir") or os.getcwd())


def open_run_folder(subcommand: str, config: Any, argv: Sequence[str]) -> Any:
    """Check the output settings and the checkpoint to resume, then lock and prepare the run folder."""
    from svlm.run_folder import RunFolder, check_checkpoint, check_output_paths, checkpoint_path, command_line

    trainer = _plain(config.get("trainer")) or {}
    run_dir = run_folder_path(config)
    check_output_paths(trainer, run_dir)
    command = command_line(argv)
    if subcommand == "fit":
        checkpoint = checkpoint_path(config.get("ckpt_path"), run_dir)
        if checkpoint is not None:
            check_checkpoint(checkpoint, _plain(config.get("model")) or {}, _plain(config.get("data")) or {})
        resume = checkpoint is not None
        hint = command if "--ckpt_path" in argv else f"{command} --ckpt_path last"
    else:
        resume = bool((_plain(config.get("model")) or {}).get("resume"))
        hint = command if resume else f"{command} --model.resume true"
    folder = RunFolder(
        run_dir, command, resume=resume, overwrite=bool(config.get("overwrite")), resume_hint=hint
    )
    return folder.open()


def _plain(value: Any) -> Any:
    """jsonargparse Namespaces / dataclasses -> dicts, recursively."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    return value


def validate_points(config: Any) -> None:
    """Build every strategy point of a parsed config once: unknown strategies or arguments raise here."""
    model = config.get("model") if hasattr(config, "get") else None
    specs = model.get("strategies") if model is not None else None
    for point in expand_points([_plain(s) for s in specs or []]):
        build_point_strategy(point)


def _allows_none(annotation: Any) -> bool:
    """Whether a parameter annotation admits ``None`` (``Any``, ``X | None``, ``Optional[X]``)."""
    if annotation is Any or annotation is None or annotation is type(None):
        return True
    return type(None) in typing.get_args(annotation) or any(
        _allows_none(a) for a in typing.get_args(annotation)
    )


def check_empty_values(config: Any, sections: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for a setting left empty (``max_new_tokens:`` in YAML is ``null``) whose parameter
    does not accept ``None``; ``sections`` maps config sections to the classes they configure."""
    for section, cls in sections.items():
        values = config.get(section) if hasattr(config, "get") else None
        if values is None or not hasattr(values, "get"):
            continue
        init = cls.__init__
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # unresolvable annotations: nothing to check against
            continue
        for name, param in inspect.signature(init).parameters.items():
            if param.default is None or name not in hints or values.get(name, param.default) is not None:
                continue  # (a parameter whose own default is None takes None, whatever its annotation says)
            if _allows_none(hints[name]):
                continue
            default = "" if param.default is inspect.Parameter.empty else f" (default: {param.default!r})"
            kind = getattr(hints[name], "__name__", str(hints[name]))
            raise ValueError(
                f"{section}.{name} is empty (null); give it a value of type {kind}{default} "
                "or remove the key."
            )


def check_tradeoff_metric(config: Any) -> None:
    """The trade-off metric must be one the points can hold (:func:`svlm.callbacks.tradeoff.check_metric`)."""
    from svlm.callbacks.tradeoff import check_metric

    tradeoff = config.get("tradeoff") if hasattr(config, "get") else None
    metric = tradeoff.get("metric") if tradeoff is not None and hasattr(tradeoff, "get") else None
    if isinstance(metric, str):
        check_metric(metric)


def _is_bench_config(data: Any) -> bool:
    """A bench config names its model with a string; LightningCLI configs have a ``model`` section."""
    if not isinstance(data, Mapping) or not data:
        return False
    return isinstance(data.get("model"), str) or set(data) <= set(inspect.signature(bench).parameters)


def _is_fit_config(data: Any) -> bool:
    """A calibration config: its ``model`` section has options of the ``fit`` module, not the evaluator's."""
    model = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(model, Mapping):
        return False
    keys, evaluator = set(model), set(inspect.signature(VLMEvaluator).parameters)
    return bool(keys - evaluator) and keys <= set(inspect.signature(subcommand_model("fit")).parameters)


def parse_config(path: str | Path, subcommand: str | None = None) -> Any:
    """Parse a shipped YAML through the same parser the CLI uses, raising on any error; nothing is loaded.

    ``subcommand`` is ``test`` (default), another LightningCLI subcommand, or ``bench``; when omitted, a
    config of only ``svlm bench`` options is parsed as ``bench`` and one whose ``model`` section holds
    calibration options (:class:`svlm.calibrate.RankCalibrator`) as ``fit``. Unknown keys, bad types,
    unknown strategies and bad strategy arguments raise. Returns the parsed namespace.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config {str(path)!r} does not exist.")
    if subcommand is None:
        data = yaml.safe_load(path.read_text())
        subcommand = "bench" if _is_bench_config(data) else "fit" if _is_fit_config(data) else "test"
    if subcommand == "bench":
        return bench_parser().parse_args(["--config", str(path)])
    parser_kwargs: dict[str, Any] = {"exit_on_error": False, subcommand: {"exit_on_error": False}}
    with warnings.catch_warnings():  # args= given while sys.argv holds the caller's (e.g. pytest's) options
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = SVLMCLI(args=[subcommand, "--config", str(path)], parse_only=True, parser_kwargs=parser_kwargs)
    return cli.config[subcommand]


# -- tables -----------------------------------------------------------------------------------------------


def format_points(points: Sequence[Mapping[str, Any]]) -> str:
    """The strategy points of a test run as a compact table (what a terminal user wants to see first)."""
    main = (points[0].get("main_metric") if points else None) or "accuracy"
    return format_table(
        points,
        [
            ("label", "label", "{}"),
            ("budget", "budget", "{:.1f}"),
            ("budget_output", "budget_out", "{:.1f}"),
            ("prefill_tflops", "TFLOPs", "{:.4f}"),
            ("flops_ratio", "flops", "{:.3f}"),
            ("accuracy", main, "{:.4f}"),
            ("relative_accuracy", "rel", "{:.3f}"),
            ("prefill_latency_s", "prefill_s", "{:.4f}"),
            ("generate_latency_s", "generate_s", "{:.4f}"),
        ],
    )


# -- svlm strategies --------------------------------------------------------------------------------------


def strategies_table() -> str:
    """One line per registered strategy: its name and the first line of its docstring; then the oracles
    (upper bounds that read benchmark annotations, left out of every-strategy sweeps) under a heading."""
    import svlm
    from svlm.strategies import strategy_class

    names = svlm.available_strategies()
    oracles = [n for n in svlm.available_strategies(include_oracles=True) if n not in names]
    width = max((len(n) for n in names + oracles), default=0)

    def rows(group: list[str]) -> list[str]:
        lines = []
        for name in group:
            doc = (inspect.getdoc(strategy_class(name)) or "").strip()
            lines.append(f"{name.ljust(width)}  {doc.splitlines()[0] if doc else ''}".rstrip())
        return lines

    lines = rows(names)
    if oracles:
        lines += ["", "Upper bounds, not methods (they read benchmark annotations; built by name only):"]
        lines += rows(oracles)
    return "\n".join(lines)


def _cmd_strategies(args: Sequence[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: svlm strategies\n\nList the registered pruning strategies with a one-line description, "
            "then the oracles (upper bounds)."
        )
        return 0
    if args:
        print(f"svlm strategies takes no arguments, got {list(args)}", file=sys.stderr)
        return 2
    print(strategies_table())
    return 0


# -- svlm bench (implemented in svlm.bench) --------------------------------------------------------------


def _cmd_bench(args: Sequence[str]) -> int:
    from svlm.bench import main as bench_main

    return bench_main(args)


HELPERS: dict[str, Callable[[Sequence[str]], int]] = {"strategies": _cmd_strategies, "bench": _cmd_bench}


def is_user_error(err: BaseException) -> bool:
    """True for a ``ValueError`` that svlm's own code raised (a bad name, budget, layer, input, data split,
    schedule...: its message names the bad value and the valid ones), as opposed to one from deep inside
    torch or transformers, whose traceback is worth seeing."""
    if not isinstance(err, ValueError):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return module == "svlm" or module.startswith("svlm.")


IMPORT_OPTION = "--import"
#: Comma-separated modules to import, like ``--import`` (set by ``svlm`` for the processes it starts).
IMPORT_ENV = "SVLM_IMPORT"


def pop_imports(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``--import MODULE`` / ``--import=MODULE`` (anywhere, repeatable) off the arguments: the modules
    to import before parsing, so that the strategies they register are known to every subcommand."""
    rest: list[str] = []
    modules: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == IMPORT_OPTION:
            value = next(it, None)
            if value is None or value.startswith("-"):
                raise ValueError(f"{IMPORT_OPTION} needs a module name (e.g. mypkg.strategies).")
            modules.append(value)
        elif arg.startswith(IMPORT_OPTION + "="):
            modules.append(arg.partition("=")[2])
        else:
            rest.append(arg)
    return rest, modules


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``svlm`` console script and ``python -m svlm``.

    Mistakes in the arguments or config files print one ``error:`` line (exit code 2), svlm's own errors
    while running (:func:`is_user_error`) one line too (exit code 1); ``SVLM_TRACEBACK=1`` re-raises them.
    """
    from jsonargparse import ArgumentError

    from svlm.plugins import add_cwd_to_path, import_modules

    try:
        argv, modules = pop_imports(list(sys.argv[1:] if args is None else args))
    except ValueError as err:
        print(f"svlm: error: {err}", file=sys.stderr)
        return 2
    # processes Lightning starts (DDP) rerun sys.argv, which no longer holds --import: they read SVLM_IMPORT
    modules = [m for m in dict.fromkeys([*os.environ.get(IMPORT_ENV, "").split(","), *modules]) if m]
    if modules:
        os.environ[IMPORT_ENV] = ",".join(modules)
    if args is None:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself
    command = f"svlm {argv[0]}" if argv and not argv[0].startswith("-") else "svlm"
    try:
        add_cwd_to_path()
        import_modules(modules)
        if argv and argv[0] in HELPERS:
            return HELPERS[argv[0]](argv[1:])
        quiet = {"exit_on_error": False}  # errors come back here instead of printing the whole usage
        parser_kwargs: dict[str, Any] = {**quiet, **{sub: dict(quiet) for sub in SVLMCLI.subcommands()}}
        SVLMCLI(args=None if args is None else argv, parser_kwargs=parser_kwargs)
    except ArgumentError as err:
        if os.environ.get("SVLM_TRACEBACK"):
            raise
        print(f"{command}: error: {err}\nRun `{command} --help` for the options.", file=sys.stderr)
        return 2
    except ValueError as err:
        if os.environ.get("SVLM_TRACEBACK") or not is_user_error(err):
            raise
        print(f"{command}: error: {err}", file=sys.stderr)
        return 1
    return 0
