"""Rows of a prompt dataset from local files: JSONL, Parquet, or a folder
written by `datasets`' `save_to_disk`. Nothing is fetched from a hub.

    rows = read_rows("math.jsonl")                      # list of dicts
    rows = read_rows("saved_folder", split="test")      # a DatasetDict's split

Errors name the file and, for JSONL, the line.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

FORMATS = ("jsonl", "json", "parquet", "datasets folder")


def read_rows(path: str | pathlib.Path, *, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of `path` as dicts (column -> value). `split` picks a split of a
    saved DatasetDict folder (default: "train" when it has one)."""
    p = pathlib.Path(path)
    if not p.exists():
        raise ValueError(f"data file {str(p)!r} does not exist")
    if p.is_dir():
        rows = _read_saved(p, split)
    elif split is not None:
        raise ValueError(f"{str(p)!r}: a split ({split!r}) can only be chosen in a saved "
                         f"datasets folder; give each split its own file")
    elif p.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(p)
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    else:
        raise ValueError(f"{str(p)!r}: unknown data format {p.suffix!r}; use one of "
                         f"{', '.join(FORMATS)} (.jsonl, .json, .parquet or a folder)")
    if not rows:
        raise ValueError(f"{str(p)!r} holds no rows")
    return rows


def _read_jsonl(p: pathlib.Path) -> list[dict[str, Any]]:
    text = p.read_text()
    if p.suffix == ".json" and text.lstrip().startswith("["):  # one JSON array of rows
        rows = json.loads(text)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{str(p)!r}: expected a JSON array of objects")
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(p)!r} line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{str(p)!r} line {n}: expected a JSON object, got "
                             f"{type(row).__name__}")
        rows.append(row)
    return rows


def _read_saved(p: pathlib.Path, split: str | None) -> list[dict[str, Any]]:
    import datasets

    try:
        data = datasets.load_from_disk(str(p))
    except FileNotFoundError as e:
        raise ValueError(f"{str(p)!r}: not a folder written by datasets' save_to_disk "
                         f"({e})") from None
    if isinstance(data, datasets.DatasetDict):
        names = list(data)
        split = split or ("train" if "train" in data else None)
        if split not in data:
            raise ValueError(f"{str(p)!r}: split {split!r} not found; it has {', '.join(names)}")
        data = data[split]
    elif split is not None:
        raise ValueError(f"{str(p)!r} holds one dataset, not splits; drop the split {split!r}")
    return data.to_list()
