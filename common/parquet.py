"""Checking parquet files against a question's schema before `datasets` reads any row."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from common.cli import DataError


def check_schema(folder: Path, files: Iterable[str], columns: tuple[str, ...],
                 other: tuple[str, ...], other_says: str) -> None:
    """Refuse unreadable files, files lacking `columns`, and the other question's data by name.

    other: columns that mark the other question's schema; other_says: what to tell the user
    then, e.g. "holds ECG records (...); use it with make q2".
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            names = set(pq.read_schema(path).names)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from e
        if set(other) <= names:
            raise DataError(f"{folder} {other_says}")
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; expected {list(columns)}")
