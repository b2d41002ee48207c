"""Checks that keep svlm GPU-ready when only a CPU is at hand.

On a GPU two mistakes are costly, and on a CPU both are invisible:

* a tensor factory without ``device=`` creates a CPU tensor; meeting a CUDA tensor later it raises
  "Expected all tensors to be on the same device";
* a host sync (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``, boolean-mask indexing, ...) stalls
  the CPU until the GPU queue drains; in a per-sample or per-token Python loop it makes selection cost
  more than the layers it saves.

:class:`DeviceDiscipline` and :class:`SyncCounter` are ``TorchFunctionMode`` s that look at the Python
frame that called each torch function and judge only calls made by svlm's own code (the installed
``svlm`` package and its ``calibrate``/``callbacks`` folders), so transformers' internals are not blamed.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

import svlm

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(svlm.__file__)))
_OWN = os.path.abspath(__file__)

#: Folders (relative to the repository root) whose code is judged.
SCOPES: tuple[str, ...] = ("svlm", "calibrate", "callbacks")

#: Host-side modules: they build tensors on the CPU on purpose (data loading, tokenisation, calibration's
#: search over CPU copies of singular values, training recipes). Paths relative to the repository root.
HOST_MODULES: tuple[str, ...] = (
    "svlm/data/",
    "svlm/metrics/",
    "svlm/zoo/train_default.py",
    "svlm/zoo/recipe/",
    "svlm/testing/processor.py",
    "svlm/testing/tokenizer.py",
    "svlm/testing/images.py",
    "svlm/testing/_corpus.py",
    "svlm/testing/models.py",
    "calibrate/budget.py",
    "calibrate/params.py",
    "calibrate/search.py",
)

FACTORIES: frozenset[Callable[..., Any]] = frozenset(
    {
        torch.tensor,
        torch.as_tensor,
        torch.arange,
        torch.range,
        torch.zeros,
        torch.ones,
        torch.full,
        torch.empty,
        torch.empty_strided,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
        torch.linspace,
        torch.logspace,
        torch.eye,
        torch.scalar_tensor,
        torch.tril_indices,
        torch.triu_indices,
    }
)

#: Tensor methods and functions that always wait for the device.
_ALWAYS_SYNC = frozenset(
    {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
        torch.Tensor.nonzero,
        torch.nonzero,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
        torch.Tensor.masked_select,
        torch.masked_select,
        torch.Tensor.unique,
        torch.unique,
        torch.unique_consecutive,
        torch.equal,
        torch.allclose,
        torch.is_nonzero,
        torch.Tensor.argwhere,
        torch.argwhere,
    }
)


def _in_scope(filename: str, host_ok: bool) -> bool:
    path = os.path.abspath(filename)
    if path == _OWN or not path.startswith(_ROOT + os.sep):
        return False
    rel = os.path.relpath(path, _ROOT).replace(os.sep, "/")
    if rel.split("/", 1)[0] not in SCOPES:
        return False
    return not (host_ok and rel.startswith(HOST_MODULES))


def _caller() -> tuple[str, int, str]:
    """File, line and function of the code that called the torch function being intercepted."""
    frame = sys._getframe(2)  # 0: this function, 1: __torch_function__, 2: the caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == _OWN:
        frame = frame.f_back
    if frame is None:
        return "", 0, ""
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


def _where(filename: str, line: int, name: str) -> str:
    return f"{os.path.relpath(filename, _ROOT)}:{line} ({name})"


class DeviceDiscipline(TorchFunctionMode):
    """Records every tensor factory that svlm code calls without an explicit ``device=``.

    ``torch.tensor(t)``/``torch.as_tensor(t)`` of a tensor keep ``t``'s device and are allowed. Use as a
    context manager; ``violations`` lists ``"file:line (function): factory"`` strings, and ``check()``
    raises an ``AssertionError`` naming them all.
    """

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            from_tensor = (
                func in (torch.tensor, torch.as_tensor) and args and isinstance(args[0], torch.Tensor)
            )
            if not from_tensor:
                filename, line, name = _caller()
                if _in_scope(filename, host_ok=True):
                    entry = f"{_where(filename, line, name)}: torch.{func.__name__} without device="
                    if entry not in self.violations:
                        self.violations.append(entry)
        return func(*args, **kwargs)

    def check(self) -> None:
        if self.violations:
            raise AssertionError(
                "Tensor factories without device= (they create CPU tensors next to GPU ones):\n  "
                + "\n  ".join(self.violations)
            )


def _is_sync(func: Callable[..., Any], args: tuple, kwargs: dict) -> bool:
    if func in _ALWAYS_SYNC:
        return True
    if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    if func is torch.Tensor.to:  # an explicit copy to the host (``.to(x.device)`` is not judged: on a CPU
        # run every device is the CPU)
        target = kwargs.get("device", args[1] if len(args) > 1 else None)
        return isinstance(target, str) and torch.device(target).type == "cpu"
    if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None
    return False


class SyncCounter(TorchFunctionMode):
    """Counts host syncs made by svlm code while active: ``total`` and ``sites`` (a Counter by call site).

    Sync points are the calls that need a value on the host (see the module docstring); on a CPU they are
    free, so this is how the CPU test suite sees what a GPU would wait for.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            filename, line, name = _caller()
            if _in_scope(filename, host_ok=False):
                self.sites[f"{_where(filename, line, name)}: {getattr(func, '__name__', func)}"] += 1
        return func(*args, **kwargs)


class CallCounter(TorchFunctionMode):
    """Counts the torch functions svlm code calls while active (``total``), views and metadata included:
    on a GPU at small batch each costs host time, so this is what selection's launch overhead scales with."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        filename, _, _ = _caller()
        if _in_scope(filename, host_ok=False):
            self.total += 1
        return func(*args, **(kwargs or {}))
