"""Load a `datasets.Dataset` split from a Hub name or a local path, with errors that say what to do.

Local paths may be:
  * a `save_to_disk` folder (Dataset or DatasetDict),
  * a single data file (.parquet / .jsonl / .json / .csv / .arrow): it is the split, whatever its name,
  * a folder of data files mirroring a Hub repo, split taken from the file name's first dash-separated part
    (``testdev-00000-of-00001.parquet`` -> split ``testdev``), optionally under a config sub-folder
    (``<root>/<config>/...``) or ``data/``, exactly as lmms-lab repos are laid out.
Anything else is handed to `datasets.load_dataset(name, config, split=...)` (Hub repos, builder scripts).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import datasets

from svlm.data.schema import DataError, EmptyDatasetError, SplitNotFoundError

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)


def _split_of(file: Path) -> str:
    # "testdev-00000-of-00001.parquet" -> "testdev"; "test.jsonl" -> "test"
    return file.name.split(".")[0].split("-")[0]


def _data_files(folder: Path) -> dict[str, list[str]]:
    """Group the data files under `folder` (recursively) by split name."""
    groups: dict[str, list[str]] = defaultdict(list)
    for f in sorted(folder.rglob("*")):
        if (
            f.is_file()
            and f.suffix in _BUILDERS
            and not f.name.startswith(".")
            and f.name != "dataset_info.json"
        ):
            if f.name in ("state.json", "dataset_dict.json"):
                continue
            groups[_split_of(f)].append(str(f))
    return dict(groups)


def _builder(files: list[str]) -> str:
    kinds = {_BUILDERS[Path(f).suffix] for f in files}
    if len(kinds) != 1:
        raise DataError(f"mixed data file formats {sorted(kinds)} in one split: {files[:4]}")
    return kinds.pop()


def _pick(dd: datasets.DatasetDict, split: str, where: str) -> datasets.Dataset:
    if split not in dd:
        raise SplitNotFoundError(f"split {split!r} not found in {where}; valid splits: {sorted(dd)}")
    return dd[split]


def load_split(
    path: str | os.PathLike, split: str, config: str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """Load one split of a dataset from a local path or the Hub (local layouts: see the module docstring)."""
    path = os.path.expanduser(os.fspath(path))
    if not _looks_local(path):
        return _load_hub(path, split, config, cache_dir)
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset path {path!r} does not exist")
    if p.is_file():
        if p.suffix not in _BUILDERS:
            raise DataError(f"unsupported data file {path!r}; expected one of {sorted(_BUILDERS)}")
        return _load_files({"train": [path]}, "train", cache_dir)
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        try:
            loaded = datasets.load_from_disk(str(p))
        except (IndexError, StopIteration) as err:  # datasets' errors for a folder without rows
            raise EmptyDatasetError(f"dataset folder {path!r} has no rows") from err
        return _pick(loaded, split, path) if isinstance(loaded, datasets.DatasetDict) else loaded
    if config and (p / config).is_dir():
        p = p / config
    elif not config and (p / "data").is_dir():
        p = p / "data"  # the default config of a Hub repo
    elif config and any(q.is_dir() and not q.name.startswith(".") and q.name != "data" for q in p.iterdir()):
        configs = sorted(q.name for q in p.iterdir() if q.is_dir() and not q.name.startswith("."))
        raise DataError(f"config {config!r} not found under {path!r}; folders there: {configs}")
    groups = _data_files(p)
    if not groups:
        raise DataError(f"no data files ({', '.join(sorted(_BUILDERS))}) found under {str(p)!r}")
    if split not in groups:
        raise SplitNotFoundError(f"split {split!r} not found in {str(p)!r}; valid splits: {sorted(groups)}")
    return _load_files({split: groups[split]}, split, cache_dir)


def _has_no_rows(file: str) -> bool:
    """True for an empty file or a parquet file whose metadata says zero rows (cheap checks only)."""
    if not os.path.isfile(file):
        return False
    if os.path.getsize(file) == 0:
        return True
    if file.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_metadata(file).num_rows == 0
    return False


def _load_files(data_files: dict[str, list[str]], split: str, cache_dir: str | None) -> datasets.Dataset:
    files = data_files[split]
    empty = EmptyDatasetError(f"split {split!r} in {files[0]!r} has no rows")
    if all(_has_no_rows(f) for f in files):
        raise empty
    try:
        return datasets.load_dataset(_builder(files), data_files=data_files, split=split, cache_dir=cache_dir)
    except ValueError as e:
        if "corresponds to no data" in str(e):  # datasets' wording for a split with zero rows
            raise empty from None
        raise
    except (StopIteration, IndexError) as e:  # empty jsonl / parquet without row groups
        raise empty from e
    except datasets.exceptions.DatasetGenerationError as e:
        if isinstance(e.__cause__, (StopIteration, IndexError)) or "empty" in str(e).lower():
            raise empty from e
        raise


def _load_hub(name: str, split: str, config: str | None, cache_dir: str | None) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError) as e:
        raise DataError(
            f"could not load {name!r} from the Hugging Face Hub and it is not a local path ({e}). "
            "Check the name, or download it and pass the local folder as path="
        ) from e
    except ValueError as e:
        if "Unknown split" not in str(e) and "split" not in str(e).lower():
            raise
        try:
            valid = datasets.get_dataset_split_names(name, config)
        except Exception:  # noqa: BLE001 - best effort: the original error is still raised below
            valid = None
        where = f"{name!r}" + (f" (config {config!r})" if config else "")
        listing = f"; valid splits: {sorted(valid)}" if valid else ""
        raise SplitNotFoundError(f"split {split!r} not found in {where}{listing}") from e
