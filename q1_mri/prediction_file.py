"""The file a Q1 stage hands to evaluation: predicted T2 for slices of a dataset.

predictions.npz holds, for n slices:
    row          (n,) int64   the slice's row in its source split as read (dropped empty slices
                              keep their row numbers, so every row maps back to the input file)
    split        (n,) str     that source split ("train" / "validation")
    patient_id   (n,) str
    view         (n,) str     axial / coronal / sagittal
    role         (n,) str     "val" (inner validation: choices only) or "test" (held out);
                              "test" for every slice of another dataset (q1_mri.infer)
    t2_pred      (n, 1, 64, 64) float16 or float32   predicted T2 in the units named by `units`
    t2_pred_flip (n, 1, 64, 64), optional  the same model averaged with its prediction on the
                              left-right mirrored slice (axial and coronal only; sagittal slices
                              have no left-right axis and are as in t2_pred)
    units, model, split_id, data_tag      0-d str: the intensity units (data.UNITS), what made
                              it, on which fold of which data (split_id "external" for other data)
Evaluation reads these files only; it never re-runs a model or rebuilds a split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import DataError
from common.io import atomic_write
from common.prediction_files import read_predictions

REQUIRED = ("row", "split", "patient_id", "view", "role", "t2_pred", "units", "model",
            "split_id", "data_tag")
SHAPE = (1, 64, 64)


@dataclass
class Predictions:
    row: np.ndarray
    split: np.ndarray
    patient_id: np.ndarray
    view: np.ndarray
    role: np.ndarray
    t2_pred: np.ndarray
    t2_pred_flip: np.ndarray | None
    units: str
    model: str
    split_id: str
    data_tag: str

    def __len__(self) -> int:
        return len(self.row)

    def select(self, mask: np.ndarray) -> Predictions:
        """The rows where `mask` (n,) bool is true."""
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        return Predictions(*(pick(getattr(self, f)) for f in (
            "row", "split", "patient_id", "view", "role", "t2_pred", "t2_pred_flip")),
            self.units, self.model, self.split_id, self.data_tag)


def save_predictions(path: Path, row: np.ndarray, split: np.ndarray, patient_id: np.ndarray,
                     view: np.ndarray, role: np.ndarray, t2_pred: np.ndarray, units: str,
                     model: str, split_id: str, data_tag: str,
                     t2_pred_flip: np.ndarray | None = None, dtype=np.float16) -> Path:
    """Write one prediction file (compressed, atomically); images stored as `dtype`."""
    arrays = {"row": np.asarray(row, np.int64), "split": np.asarray(split, str),
              "patient_id": np.asarray(patient_id, str), "view": np.asarray(view, str),
              "role": np.asarray(role, str), "t2_pred": np.asarray(t2_pred).astype(dtype),
              "units": np.array(units), "model": np.array(model),
              "split_id": np.array(split_id), "data_tag": np.array(data_tag)}
    if t2_pred_flip is not None:
        arrays["t2_pred_flip"] = np.asarray(t2_pred_flip).astype(dtype)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez_compressed(f, **arrays)
    return atomic_write(path, write)


def load_predictions(path: Path, split_id: str | None = None,
                     data_tag: str | None = None) -> Predictions:
    """Read a predictions.npz; refuse one that lacks fields, has the wrong shapes, or belongs to
    another split or data."""
    a = read_predictions(path, REQUIRED, split_id, data_tag)
    n = len(a["row"])
    for key in ("t2_pred", "t2_pred_flip"):
        if key in a and a[key].shape != (n, *SHAPE):
            raise DataError(f"predictions {path}: {key} has shape {a[key].shape}, expected "
                            f"({n}, {', '.join(map(str, SHAPE))})")
    if not all(len(a[k]) == n for k in ("split", "patient_id", "view", "role")):
        raise DataError(f"predictions {path}: row, split, patient_id, view and role differ in "
                        "length")
    return Predictions(a["row"], a["split"], a["patient_id"], a["view"], a["role"], a["t2_pred"],
                       a.get("t2_pred_flip"), str(a["units"]), str(a["model"]),
                       str(a["split_id"]), str(a["data_tag"]))
