"""Files the cross-validation hands on: the split (who plays which role, decided once and then
only read) and its final choice (what --from-cv trains)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.cli import DataError
from common.io import read_json, write_json


def load_or_write(path: Path, build: Callable[[], dict], ident: dict) -> dict:
    """Read the split file at `path`, or build and write it once.

    `ident` (e.g. the data tag and the patient count) must match the file's own entries: a
    split made from other data is refused, never silently reused.
    """
    if not path.exists():
        write_json(path, build())
    split = read_json(path)
    for key, value in ident.items():
        if split.get(key) != value:
            raise DataError(f"split file {path} was made from other data ({key} "
                            f"{split.get(key)!r}, this data {value!r}); remove it to re-split")
    return split


def cv_choice(root: Path, question: str) -> dict:
    """`final_choice` of the cross-validation's metrics.json under `root` (for --from-cv)."""
    path = root / "metrics.json"
    if not path.exists():
        raise DataError(f"--from-cv: no cross-validation results at {path}: run make {question} "
                        "first")
    final = read_json(path).get("final_choice")
    if not final:
        raise DataError(f"--from-cv: {path} names no chosen configuration")
    return final
