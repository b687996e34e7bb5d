"""What the cross-validation hands on: the split file (who plays which role, decided once and
then only read), its final choice (what make q1-final / q2-final deploys) and the check that a
group of fold runs covers every item once."""
from __future__ import annotations

import hashlib
import json
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


def split_id(split: dict, fold: str) -> str:
    """Short hash of one fold's assignment: prediction files carry it, evaluation checks it."""
    text = json.dumps({"scheme": split["scheme"], "seed": split["seed"],
                       "fold": split["folds"][fold]}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cv_choice(root: Path, question: str) -> dict:
    """`final_choice` of the cross-validation's metrics.json under `root` (what is deployed)."""
    path = root / "metrics.json"
    if not path.exists():
        raise DataError(f"no cross-validation results at {path}: run make {question} first")
    final = read_json(path).get("final_choice")
    if not final:
        raise DataError(f"{path} names no chosen configuration (no method completed every "
                        "fold)")
    return final


def out_of_fold_problems(tested: dict[str, set[str]], expected_folds: int,
                         everyone: int | None, what: str) -> list[str]:
    """What stops a k-fold group of runs from being a headline: folds not trained, and items
    (`what`: patients, records) of the source never predicted. An item tested by two folds
    means the runs come from different splits: refused. tested: {fold: items it tested}."""
    problems = [] if len(tested) == expected_folds else [
        f"{len(tested)} of {expected_folds} folds trained"]
    seen: dict[str, list[str]] = {}
    for fold, items in tested.items():
        for item in items:
            seen.setdefault(item, []).append(fold)
    twice = sorted(i for i, folds in seen.items() if len(folds) > 1)
    if twice:
        raise DataError(f"{what} {twice[:5]} are tested by two folds "
                        f"({', '.join(seen[twice[0]])}): the runs come from different splits")
    if everyone is not None and len(seen) < everyone:
        problems.append(f"{everyone - len(seen)} of {everyone} {what} not predicted")
    return problems


def written_from(split_file: Path, folders: Callable[[str], list[Path]]) -> bool:
    """Whether every fold of `split_file` already has finished runs in `folders(fold)`, each
    written from that fold of this split (its summary names the same split id): what a
    deterministic stage (baselines) keeps under --resume. False when the file is missing."""
    if not split_file.exists():
        return False
    split = read_json(split_file)
    return all((f / "predictions.npz").exists() and (f / "summary.json").exists()
               and read_json(f / "summary.json").get("split_id") == split_id(split, fold)
               for fold in split["folds"] for f in folders(fold))
