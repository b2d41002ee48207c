"""Atomic writing of result files.

A long evaluation that is killed (time limit, OOM, Ctrl-C) while writing must never leave a half-written
``tradeoff.csv`` behind that a later plot or table silently reads. Every result file is therefore written to
a temporary file in the same directory and moved into place with :func:`os.replace`, which is atomic on POSIX
and Windows: readers see either the old file or the complete new one.

Work in progress is kept by :class:`svlm.journal.Journal`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

__all__ = [
    "POINT_COLUMNS",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "config_hash",
    "csv_columns",
    "jsonable",
]

#: Leading columns of a trade-off table (one row per evaluated strategy point); metric columns follow.
POINT_COLUMNS: tuple[str, ...] = (
    "label",
    "strategy",
    "budget_target",
    "budget",
    "budget_output",
    "visual_tokens",
    "prefill_flops",
    "dense_prefill_flops",
    "prefill_tflops",
    "flops_ratio",
    "main_metric",
    "accuracy",
    "relative_accuracy",
    "prefill_latency_s",
    "generate_latency_s",
    "samples",
    "pareto",
)


def _create_temp(path: Path) -> tuple[int, str]:
    """Create a new temporary file next to ``path`` with the permissions of a plain ``open`` (0666 less the
    umask; ``tempfile.mkstemp`` would give 0600, and ``os.replace`` keeps the temporary file's mode)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a temporary file next to {path}.")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``: a clean exit moves it onto ``path``, an error deletes it.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (binary). Parent directories are created.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding, newline=None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def jsonable(obj: Any) -> Any:
    """Tensors, numpy values, paths and non-finite floats -> strict-JSON values (NaN/inf -> None)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return jsonable(obj.tolist())
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    return str(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (no NaN) to ``path`` atomically."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def csv_columns(rows: Iterable[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """Union of the rows' keys: ``first`` (when present in some row) then the rest in order of appearance."""
    seen: dict[str, None] = {}
    rows = list(rows)
    for key in first:
        if any(key in row for row in rows):
            seen[key] = None
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _csv_cell(value: Any) -> Any:
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def atomic_write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> Path:
    """Write ``rows`` (dicts) as CSV atomically; missing values and NaN become empty cells."""
    columns = list(columns) if columns is not None else csv_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def config_hash(obj: Any) -> str:
    """Short stable digest of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def format_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; ``cols`` are (key, header, format). Missing / NaN values print as ``-``."""

    def cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return fmt.format(v)

    head = [h for _, h, _ in cols]
    body = [[cell(r, k, f) for k, _, f in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(head), *(line(b) for b in body)])
