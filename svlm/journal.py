"""The resume journal of ``svlm test``: what was computed, keyed on everything that determines it.

One append-only JSON-lines file per process (``<run>/journal/rank<r>.jsonl``), one line per finished
(strategy point, batch), flushed as it is written; a line torn by a kill is ignored on reading, so an
interrupted sweep resumes from every line that made it to disk.

What a resume may trust:

* ``header.json`` names what determines every result of the run (:func:`run_determinants`: svlm version,
  model, weights fingerprint, revision, dtype, device type, attention, generation and data settings). A
  resume whose determinants differ is refused, naming each difference (:class:`JournalMismatch`).
* Each record carries the key of its strategy point (strategy, budget, arguments, schedule file contents):
  points whose settings changed are not found and are computed again.
* Each record carries a checksum of its contents and is validated (:func:`validate_record`: schema, finite
  non-negative costs in range, one answer per sample). Records that fail are recomputed, with a warning that
  says how many and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from svlm.results import atomic_write_json, config_hash, jsonable

log = logging.getLogger(__name__)

__all__ = [
    "STAT_KEYS",
    "Journal",
    "JournalMismatch",
    "PointJournal",
    "batch_key",
    "read_journal",
    "record_checksum",
    "run_determinants",
    "validate_record",
    "weights_fingerprint",
]

VERSION = 2
HEADER_NAME = "header.json"

#: Cost sums of one (point, batch), as the evaluator accumulates them (see ``VLMEvaluator.cost_stats``).
STAT_KEYS: tuple[str, ...] = (
    "samples",
    "visual_samples",
    "batches",
    "timed_batches",
    "budget",
    "budget_output",
    "visual_tokens",
    "kv_cache_bytes",
    "prefill_flops",
    "dense_prefill_flops",
    "prefill_latency",
    "generate_latency",
    "new_tokens",
)


class JournalMismatch(ValueError):
    """The journal of the run folder was recorded under other settings than this run's."""


def weights_fingerprint(model: nn.Module, samples: int = 64) -> str:
    """Digest of a model's weights: names, shapes, dtypes and ``samples`` evenly spaced values of every
    parameter and buffer. Cheap (one host transfer of a few thousand values) and changes when the weights
    are retrained or replaced, not when the same files are loaded again."""
    digest = hashlib.sha256()
    picked = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel():
            index = torch.linspace(0, flat.numel() - 1, min(samples, flat.numel()), device=flat.device).long()
            picked.append(flat[index].float())
    if picked:
        digest.update(torch.cat(picked).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_determinants(
    model: nn.Module,
    *,
    model_name: str,
    attn_implementation: str,
    max_new_tokens: int,
    seed: int,
    processor_kwargs: Mapping[str, Any],
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """What determines every result of an evaluation run, by name (the journal header)."""
    import svlm

    param = next(model.parameters())
    config = getattr(model, "config", None)
    return jsonable(
        {
            "svlm": svlm.__version__,
            "model": model_name,
            "revision": getattr(config, "_commit_hash", None),
            "weights": weights_fingerprint(model),
            "dtype": str(param.dtype),
            "device": param.device.type,
            "attn_implementation": attn_implementation,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "processor_kwargs": dict(processor_kwargs),
            "data": dict(data),
        }
    )


def record_checksum(record: Mapping[str, Any]) -> str:
    """sha256 of a record's contents (without its ``checksum``), key order aside."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    text = json.dumps(jsonable(body), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_record(record: Any) -> str | None:
    """Why a journal record cannot be trusted (``None`` if it can): schema, checksum, ranges, answers."""
    if not isinstance(record, dict):
        return "not an object"
    for key, kind in (("point", str), ("batch", str), ("label", str), ("answers", list), ("stats", dict)):
        if not isinstance(record.get(key), kind):
            return f"field {key!r} missing or not a {kind.__name__}"
    if record.get("checksum") != record_checksum(record):
        return "checksum mismatch (edited or corrupted)"
    answers, stats = record["answers"], record["stats"]
    if not all(isinstance(a, str) for a in answers):
        return "answers are not all strings"
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        return f"stats lack {missing}"
    bad = [k for k in STAT_KEYS if not _number(stats[k]) or stats[k] < 0]
    if bad:
        return f"stats {bad} are not finite non-negative numbers ({ {k: stats[k] for k in bad} })"
    n = stats["samples"]
    if n != int(n) or n < 1 or len(answers) != n:
        return f"{len(answers)} answers for samples={n}"
    ids = record.get("ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(answers)):
        return f"{len(answers)} answers for {len(ids) if isinstance(ids, list) else ids!r} sample ids"
    if stats["batches"] != 1 or stats["timed_batches"] not in (0, 1):
        return f"batches={stats['batches']}, timed_batches={stats['timed_batches']} (expected 1 and 0/1)"
    if stats["visual_samples"] > n:
        return f"visual_samples={stats['visual_samples']} > samples={n}"
    if stats["budget"] > stats["visual_tokens"] * (1 + 1e-6) + 1e-6:
        return f"budget={stats['budget']} exceeds the visual tokens {stats['visual_tokens']}"
    if stats["prefill_flops"] > 2 * stats["dense_prefill_flops"]:
        return f"prefill_flops={stats['prefill_flops']:g} > 2x the dense {stats['dense_prefill_flops']:g}"
    return None


def read_journal(folder: str | os.PathLike) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    """The valid records of the ``*.jsonl`` files in ``folder`` keyed by ``(point, batch)``, and the number
    of lines skipped (torn by a kill, another version, or failing :func:`validate_record`)."""
    records, rejected = _read(Path(folder))
    return records, len(rejected)


def _read(folder: Path) -> tuple[dict[tuple[str, str], dict[str, Any]], list[str]]:
    records: dict[tuple[str, str], dict[str, Any]] = {}
    rejected: list[str] = []
    if not folder.is_dir():
        return records, rejected
    for file in sorted(folder.glob("*.jsonl")):
        with open(file, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                where = f"{file.name}:{number}"
                if not line.endswith("\n"):  # the last line of a killed writer
                    rejected.append(f"{where}: torn line")
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    rejected.append(f"{where}: not JSON")
                    continue
                if not isinstance(record, dict) or record.get("version") != VERSION:
                    rejected.append(f"{where}: not a version-{VERSION} record")
                    continue
                reason = validate_record(record)
                if reason is not None:
                    rejected.append(f"{where}: {reason}")
                    continue
                records[(record["point"], record["batch"])] = record
    return records, rejected


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the journal, {b!r} now")
    return out


class Journal:
    """Per-process record of finished (strategy point, batch) results in ``folder/rank<r>.jsonl``.

    ``determinants`` (see :func:`run_determinants`) are written to ``header.json`` by rank 0 of a fresh run;
    a resumed run checks them against the header first and raises :class:`JournalMismatch` naming every
    difference. A fresh run (``resume=False``) starts empty files, but only at its first :meth:`add`: a run
    that fails before computing anything leaves the earlier journal as it was. ``resume=True`` reads every
    rank's file (so a run may resume with another number of processes), then appends.
    """

    VERSION = VERSION

    def __init__(
        self,
        folder: str | os.PathLike,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = False,
        determinants: Mapping[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / f"rank{rank}.jsonl"
        self.rank, self.world_size, self.resume = rank, world_size, resume
        self.determinants = dict(determinants or {})
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.rejected: list[str] = []
        self._file: IO[str] | None = None
        self._closed = False
        if resume:
            self._check_header()
            self.records, self.rejected = _read(self.folder)

    @property
    def skipped(self) -> int:
        """Lines not used: torn, unreadable, or failing validation."""
        return len(self.rejected)

    def _check_header(self) -> None:
        header_path = self.folder / HEADER_NAME
        if not self.folder.is_dir() or not any(self.folder.glob("*.jsonl")):
            return  # nothing to resume: a fresh start
        try:
            header = json.loads(header_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            header = None
        if not isinstance(header, dict) or header.get("version") != VERSION:
            raise JournalMismatch(
                f"The journal in {str(self.folder)!r} has no valid {HEADER_NAME} (written by another svlm "
                "version or edited), so its results cannot be trusted; rerun with --overwrite true (or "
                "choose another --trainer.default_root_dir)."
            )
        differences = _differences(header.get("determinants", {}), jsonable(self.determinants))
        if differences:
            raise JournalMismatch(
                f"Cannot resume from {str(self.folder)!r}: the run's settings changed "
                f"({'; '.join(differences)}); rerun with --overwrite true to recompute everything, or choose "
                "another --trainer.default_root_dir."
            )

    def _open(self) -> IO[str]:
        if self._closed:
            raise RuntimeError(f"Journal {self.path} is closed.")
        if self._file is not None:
            return self._file
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.resume and self.rank == 0:
            for old in self.folder.glob("rank*.jsonl"):
                suffix = old.stem.removeprefix("rank")
                if suffix.isdigit() and int(suffix) >= self.world_size:
                    old.unlink(missing_ok=True)
        if self.rank == 0 and (not self.resume or not (self.folder / HEADER_NAME).exists()):
            atomic_write_json(
                self.folder / HEADER_NAME, {"version": VERSION, "determinants": self.determinants}
            )
        self._file = open(self.path, "a" if self.resume else "w", encoding="utf-8")  # noqa: SIM115
        if self.resume and self._file.tell() > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:  # end a torn line so the next record starts on its own line
                self._file.write("\n")
        return self._file

    def get(self, point: str, batch: str) -> dict[str, Any] | None:
        """The valid record of ``point`` on ``batch`` from an earlier run, if any."""
        return self.records.get((point, batch))

    def add(self, record: Mapping[str, Any]) -> None:
        """Append one record (needs ``point`` and ``batch`` keys), checksummed, and flush it to the OS."""
        file = self._open()
        record = jsonable({"version": VERSION, **record})
        record["checksum"] = record_checksum(record)
        file.write(json.dumps(record, allow_nan=False) + "\n")
        file.flush()

    def sync(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            with contextlib.suppress(OSError):
                self.sync()
            self._file.close()
            self._file = None


def point_key(run: Mapping[str, Any], point: Mapping[str, Any]) -> str:
    """Key of one strategy point's records: the run's determinants plus the point's own settings."""
    return config_hash({**run, **point})


def batch_key(batch: Mapping[str, Any], batch_idx: int) -> str:
    """Identity of a batch for resume records: its sample ids (else dataset rows, else its index)."""
    for key in ("ids", "indices"):
        values = batch.get(key)
        if values is not None and all(v is not None for v in values):
            return config_hash({key: list(values)})
    return f"batch-{batch_idx}"


def matches_batch(record: Mapping[str, Any], batch: Mapping[str, Any]) -> bool:
    """A journal record answers this very batch: one answer per sample, the same sample ids."""
    size = len(batch.get("questions") or batch.get("conversations") or [])
    ids = batch.get("ids")
    if size and len(record["answers"]) != size:
        return False
    return ids is None or record.get("ids") is None or list(record["ids"]) == list(ids)


class PointJournal:
    """The journal of one evaluation over a list of strategy points: replays a batch's recorded points and
    records the newly computed ones.

    Args:
        folder, rank, world_size, resume, determinants: as :class:`Journal`.
        points: ``(label, settings)`` per strategy point; ``settings`` (strategy, budget, arguments, ...) and
            the determinants make the point's key (:func:`point_key`).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        rank: int,
        world_size: int,
        *,
        resume: bool,
        determinants: Mapping[str, Any],
        points: Sequence[tuple[str, Mapping[str, Any]]],
    ) -> None:
        self.resume = resume
        self.labels = [label for label, _ in points]
        self.keys = [point_key(determinants, settings) for _, settings in points]
        self.journal = Journal(folder, rank, world_size, resume=resume, determinants=determinants)

    def summary(self) -> str:
        """What a resumed run found, for the log."""
        records = self.journal.records
        found = {key for key, _ in records}
        missing = [label for label, key in zip(self.labels, self.keys, strict=True) if key not in found]
        line = f"svlm: resuming from {len(records)} recorded results in {self.journal.folder}"
        return line + (f"; points with no record (computed now): {missing}" if missing and found else "")

    def replay(self, batch: Mapping[str, Any], batch_idx: int) -> dict[int, dict[str, Any]]:
        """Records of this batch by point index (only when resuming)."""
        if not self.resume:
            return {}
        key = batch_key(batch, batch_idx)
        found = {}
        for i, point in enumerate(self.keys):
            record = self.journal.get(point, key)
            if record is not None and matches_batch(record, batch):
                found[i] = record
        return found

    def record(
        self, i: int, batch: Mapping[str, Any], batch_idx: int, answers: list[str], stats: Mapping[str, float]
    ) -> None:
        """Append point ``i``'s answers and costs on this batch."""
        ids = batch.get("ids")
        self.journal.add(
            {
                "point": self.keys[i],
                "batch": batch_key(batch, batch_idx),
                "label": self.labels[i],
                "ids": list(ids) if ids is not None else None,
                "answers": answers,
                "stats": dict(stats),
            }
        )

    def sync(self) -> None:
        self.journal.sync()

    def close(self) -> None:
        self.journal.close()


def summarize_rejected(rejected: Sequence[str]) -> str:
    """One line about journal lines that were not used."""
    if not rejected:
        return ""
    return f"{len(rejected)} journal line(s) not used and recomputed (first: {rejected[0]})"
