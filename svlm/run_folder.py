"""One folder per run: every output of ``svlm test`` / ``svlm fit`` lives in ``trainer.default_root_dir``.

:class:`RunFolder` guards that folder for the whole run:

* a lock file (``.svlm.lock``: pid, host, start time, command) so that a second run into the same folder
  stops with an error naming the holder; a lock whose process is gone (same host) is taken over, with a
  message;
* a folder holding an earlier run is used only to resume it (``--model.resume true``, ``--ckpt_path``) or,
  with ``--overwrite``, replaced; otherwise the run stops before touching anything;
* nothing of the earlier run is lost before the new run has validated its arguments: when replacing, its
  files are moved aside into ``.svlm-previous/`` and deleted only at :meth:`RunFolder.commit` (the first
  finished batch); a run that fails before that has its own files removed and the earlier ones put back
  (also at the next start, after a kill);
* temporary files of atomic writes that a kill left behind are removed at the start.

``run.json`` records what ran into the folder (command, state ``running``/``interrupted``/``finished``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from svlm.results import atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["OUTPUT_NAMES", "RunFolder", "RunFolderError", "clean_stale_temp_files"]

LOCK_NAME = ".svlm.lock"
PREVIOUS_NAME = ".svlm-previous"
MANIFEST_NAME = "run.json"
MODE_NAME = ".mode"  # in .svlm-previous: "moved" (replaced run) or "copied" (resumed run's rewritten files)

#: Files and folders a run writes into its folder: what "an earlier run" consists of (nothing else in the
#: folder is ever moved or deleted).
OUTPUT_NAMES: tuple[str, ...] = (
    MANIFEST_NAME,
    "config.yaml",
    "metrics.csv",
    "hparams.yaml",
    "tradeoff.csv",
    "tradeoff.json",
    "tradeoff.png",
    "schedule.yaml",
    "journal",
    "overlays",
    "checkpoints",
)

#: Outputs a resumed run rewrites before it has validated (kept aside until :meth:`RunFolder.commit`).
RESUME_REWRITES: tuple[str, ...] = ("config.yaml", "metrics.csv", "hparams.yaml")


#: Lock files this process holds (a second RunFolder on the same folder in this process is refused too).
_HELD: set[Path] = set()


class RunFolderError(ValueError):
    """The run folder is in use, or holds another run that this one would overwrite."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.*.tmp`` files of :func:`svlm.results.atomic_open` that a killed writer left in
    ``folder`` and its subfolders. Call it only while holding the folder's lock."""
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        if path.is_file() and PREVIOUS_NAME not in path.parts:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


class RunFolder:
    """Lock and bookkeeping of one run's folder (see the module docstring).

    Args:
        path: The run folder (``trainer.default_root_dir``).
        command: What runs (for the lock and ``run.json``), e.g. ``svlm test --config ...``.
        resume: This run continues the earlier one in the folder (journal or checkpoint).
        overwrite: Replace an earlier run in the folder.
        resume_hint: How to resume this run, printed when it is interrupted.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        command: str = "",
        *,
        resume: bool = False,
        overwrite: bool = False,
        resume_hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.command = command
        self.resume = resume
        self.overwrite = overwrite
        self.resume_hint = resume_hint
        self.committed = False
        self.stopped = False
        self._locked = False
        self._kept: list[str] = []  # names of earlier outputs kept aside in .svlm-previous
        self._existing: set[str] = set()  # outputs present before this run (resume: not ours to delete)

    # -- paths -----------------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def previous(self) -> Path:
        return self.path / PREVIOUS_NAME

    def outputs(self) -> list[str]:
        """Names of run outputs present in the folder."""
        return [name for name in OUTPUT_NAMES if (self.path / name).exists()]

    # -- start -----------------------------------------------------------------------------------------
    def open(self) -> RunFolder:
        """Lock the folder, repair what a killed run left, and check that this run may use it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._restore_interrupted_replacement()
            removed = clean_stale_temp_files(self.path)
            if removed:
                print(
                    f"svlm: removed {len(removed)} temporary file(s) a killed run left in {self.path}",
                    file=sys.stderr,
                )
            self._check_and_set_aside()
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": self.command}
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or not self._stale(holder):
                    raise RunFolderError(self._busy_message(holder)) from None
                print(
                    f"svlm: taking over the lock of {self.path}: its holder (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, started {holder.get('started')}) is no longer running.",
                    file=sys.stderr,
                )
                with contextlib.suppress(FileNotFoundError):
                    self.lock_path.unlink()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(info, f)
            self._locked = True
            _HELD.add(self.lock_path.resolve())
            return
        raise RunFolderError(self._busy_message(self._holder()))

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.lock_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _stale(self, holder: dict[str, Any]) -> bool:
        """The holder is gone: a dead process on this host, or this process without a live lock on the
        folder (left by a run that could not clean up)."""
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False
        if pid == os.getpid():
            return self.lock_path.resolve() not in _HELD
        return not _alive(pid)

    def _busy_message(self, holder: dict[str, Any] | None) -> str:
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            + (f": {holder['command']}" if holder.get("command") else "")
            if holder
            else "unreadable lock file"
        )
        return (
            f"Run folder {str(self.path)!r} is in use by another svlm run ({who}); wait for it to end or "
            f"choose another --trainer.default_root_dir (delete {str(self.lock_path)!r} only if that run is "
            "gone)."
        )

    def _restore_interrupted_replacement(self) -> None:
        """A run killed before its first result while replacing (or resuming) an earlier run: put the
        earlier run back as it was."""
        if not self.previous.is_dir():
            return
        mode = self.previous / MODE_NAME
        replaced = not mode.is_file() or mode.read_text().strip() == "moved"
        (self.previous / MODE_NAME).unlink(missing_ok=True)
        kept = [p.name for p in self.previous.iterdir()]
        if replaced:  # everything in the folder was written by the killed run
            self._remove(OUTPUT_NAMES)
        self._remove(kept)
        for name in kept:
            os.replace(self.previous / name, self.path / name)
        self.previous.rmdir()
        print(
            f"svlm: restored the earlier run in {self.path} ({', '.join(sorted(kept)) or 'no files'}): "
            "the run that was replacing it stopped before its first result.",
            file=sys.stderr,
        )

    def _remove(self, names: Iterable[str]) -> None:
        for name in names:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    def _describe(self) -> str:
        try:
            manifest = json.loads((self.path / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        if isinstance(manifest, dict):
            return (
                f"a {manifest.get('state', 'earlier')} run ({manifest.get('command') or 'unknown command'})"
            )
        return f"an earlier run ({', '.join(self.outputs())})"

    def _check_and_set_aside(self) -> None:
        existing = self.outputs()
        self._existing = set(existing)
        if not existing:
            return
        if self.resume:
            self._set_aside([n for n in RESUME_REWRITES if n in existing], copy=True)
            return
        if not self.overwrite:
            raise RunFolderError(
                f"Run folder {str(self.path)!r} holds {self._describe()}; resume it (--model.resume true for "
                "test, --ckpt_path last for fit), replace it with --overwrite true, or choose another "
                "--trainer.default_root_dir."
            )
        self._set_aside(existing, copy=False)
        self._existing = set()

    def _set_aside(self, names: Iterable[str], copy: bool) -> None:
        names = list(names)
        if not names:
            return
        self.previous.mkdir()
        (self.previous / MODE_NAME).write_text("copied" if copy else "moved")
        for name in names:
            source, target = self.path / name, self.previous / name
            if copy:
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            else:
                os.replace(source, target)
        self._kept = names

    # -- end -------------------------------------------------------------------------------------------
    def commit(self) -> None:
        """The run has validated and produced its first result: the earlier run's files go for good."""
        if self.committed:
            return
        self.committed = True
        if self.previous.is_dir():
            shutil.rmtree(self.previous, ignore_errors=True)
        self._kept = []
        self._write_manifest("running")

    def abort(self) -> None:
        """The run failed before :meth:`commit`: remove what it wrote and put the earlier run back."""
        if self.committed:
            return
        for name in OUTPUT_NAMES:
            target = self.path / name
            if name in self._existing and name not in RESUME_REWRITES:
                continue  # a resumed run's journal and checkpoints: still the earlier run's
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()
        if self.previous.is_dir():
            (self.previous / MODE_NAME).unlink(missing_ok=True)
            for entry in self.previous.iterdir():
                self._remove([entry.name])
                os.replace(entry, self.path / entry.name)
            self.previous.rmdir()
        self._kept = []

    def finish(self, state: str) -> None:
        """Record the end state (``finished`` or ``interrupted``) of a committed run."""
        if self.committed:
            self._write_manifest(state)

    def _write_manifest(self, state: str) -> None:
        path = self.path / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_text(encoding="utf-8")) if state != "running" else {}
        except (OSError, ValueError):
            manifest = {}
        manifest.update({"command": self.command, "state": state, "pid": os.getpid()})
        manifest.setdefault("started", _now())
        if state != "running":
            manifest["ended"] = _now()
        atomic_write_json(path, manifest)

    def release(self) -> None:
        """Drop the lock (only this process's own)."""
        if not self._locked:
            return
        holder = self._holder()
        if holder is None or holder.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
        self._locked = False
        _HELD.discard(self.lock_path.resolve())


def command_line(argv: Sequence[str]) -> str:
    """A shell-quoted ``svlm ...`` command line."""
    import shlex

    return " ".join(["svlm", *(shlex.quote(a) for a in argv)])


# -- Lightning glue ---------------------------------------------------------------------------------------


def _resolve(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _init_args(spec: Any) -> tuple[str, dict[str, Any]]:
    """(class path, init args) of a jsonargparse class spec (dict or Namespace)."""
    if hasattr(spec, "as_dict"):
        spec = spec.as_dict()
    if not isinstance(spec, Mapping):
        return "", {}
    return str(spec.get("class_path", "")), dict(spec.get("init_args") or {})


def check_output_paths(trainer_config: Mapping[str, Any], run_dir: str | os.PathLike) -> None:
    """Refuse a logger or checkpoint folder outside the run folder: every output follows
    ``trainer.default_root_dir`` (the logger and ``ModelCheckpoint`` default to it; leave them unset)."""
    root = _resolve(run_dir)
    loggers = trainer_config.get("logger")
    for spec in loggers if isinstance(loggers, list) else [loggers]:
        _, args = _init_args(spec)
        save_dir = args.get("save_dir")
        if save_dir is not None and _resolve(save_dir) != root:
            raise RunFolderError(
                f"trainer.logger save_dir {str(save_dir)!r} is not the run folder {str(run_dir)!r} "
                "(trainer.default_root_dir): leave save_dir out, svlm logs into the run folder."
            )
    callbacks = trainer_config.get("callbacks") or []
    for spec in callbacks if isinstance(callbacks, list) else [callbacks]:
        class_path, args = _init_args(spec)
        dirpath = args.get("dirpath")
        if class_path.endswith("ModelCheckpoint") and dirpath is not None:
            if root not in (_resolve(dirpath), *_resolve(dirpath).parents):
                raise RunFolderError(
                    f"ModelCheckpoint dirpath {str(dirpath)!r} is outside the run folder {str(run_dir)!r}: "
                    "leave dirpath out (checkpoints go to <run folder>/checkpoints)."
                )


#: Settings a resumed calibration may change (they do not change what was computed).
VOLATILE_SETTINGS: frozenset[str] = frozenset({"cpu_threads", "num_workers", "cache_dir"})


def checkpoint_path(ckpt_path: str | None, run_dir: str | os.PathLike) -> Path | None:
    """The file ``--ckpt_path`` names: ``last`` is ``<run folder>/checkpoints/last.ckpt``; None if unset or
    ``last`` in an empty folder (a fresh start, as in Lightning)."""
    if ckpt_path in (None, "", "best", "hpc", "registry"):
        return None
    if ckpt_path == "last":
        path = Path(run_dir) / "checkpoints" / "last.ckpt"
        if path.is_file():
            return path
        if RunFolder(run_dir).outputs():
            raise RunFolderError(
                f"--ckpt_path last: {str(run_dir)!r} holds an earlier run but no {str(path)!r} to resume (it "
                "stopped before its first checkpoint); start afresh with --overwrite true."
            )
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise RunFolderError(f"--ckpt_path {str(ckpt_path)!r} does not exist.")
    return path


def check_checkpoint(path: str | os.PathLike, model: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """Refuse to resume from a checkpoint made with other model or data settings, naming each difference."""
    import torch

    from svlm.results import jsonable

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error here
        raise RunFolderError(f"Checkpoint {str(path)!r} cannot be read: {err}") from err
    saved = {
        "model": dict(checkpoint.get("hyper_parameters") or {}),
        "data": dict(checkpoint.get("datamodule_hyper_parameters") or {}),
    }
    differences = []
    for section, now in (("model", model), ("data", data)):
        old, new = jsonable(saved[section]), jsonable(dict(now))
        for key in sorted(set(old) & set(new)):
            if key not in VOLATILE_SETTINGS and old[key] != new[key]:
                differences.append(f"{section}.{key}: {old[key]!r} in the checkpoint, {new[key]!r} now")
    if differences:
        raise RunFolderError(
            f"Checkpoint {str(path)!r} belongs to a run with other settings ({'; '.join(differences)}); "
            "resume with that run's settings, or start afresh with --overwrite true (or another "
            "--trainer.default_root_dir)."
        )


def _lightning_callback_base() -> type:
    from lightning.pytorch import Callback

    return Callback


class RunFolderCallback(_lightning_callback_base()):  # type: ignore[misc]
    """Commits the :class:`RunFolder` at the first finished batch; on an error before that, restores the
    earlier run; on Ctrl-C or an error after it, records ``interrupted`` and prints how to resume."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def _batch_done(self, trainer: Any) -> None:
        if not self.folder.committed and not getattr(trainer, "sanity_checking", False):
            self.folder.commit()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self._batch_done(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: D102
        self._batch_done(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: D102
        self._batch_done(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:  # noqa: D102
        stop(self.folder, exception)


def stop(folder: RunFolder, exception: BaseException | None) -> None:
    """End of a run that raised ``exception`` (None: finished); only the first call counts."""
    if folder.stopped:
        return
    folder.stopped = True
    if exception is None:
        folder.finish("finished")
        return
    if not folder.committed:
        folder.abort()
        return
    folder.finish("interrupted")
    if folder.resume_hint:
        print(
            f"svlm: the run stopped; what it finished is kept. Resume with:\n  {folder.resume_hint}",
            file=sys.stderr,
        )
