"""The file a Q2 run hands to evaluation: one row per scored beat it predicted.

predictions.npz holds, for n beats:
    patient_id (n,) str       record name
    source_db  (n,) str       database of the record
    beat_loc   (n,) int64     the beat's value in the record's beat_locs (sample at 128 Hz)
    label      (n,) int64     true class 0..2
    role       (n,) str       "val" (inner validation: tuning only) or "test" (held out)
    prob       (n, 3) float32 class probabilities NOR, SVEB, VEB       (classifiers)
    score      (n,) float32   anomaly score, higher = more abnormal     (the autoencoder)
    prob_adapted (n, 3)       probabilities after label-free per-record adaptation (optional)
    model, split_id, data_tag 0-d str: what made it, on which fold of which data
Evaluation reads these files only; it never re-runs a model or rebuilds a split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import softmax

from common.cli import DataError
from common.io import savez
from common.prediction_files import read_predictions

REQUIRED = ("patient_id", "source_db", "beat_loc", "label", "role", "model", "split_id",
            "data_tag")


@dataclass
class Predictions:
    patient_id: np.ndarray
    source_db: np.ndarray
    beat_loc: np.ndarray
    label: np.ndarray
    role: np.ndarray
    prob: np.ndarray | None
    score: np.ndarray | None
    prob_adapted: np.ndarray | None
    model: str
    split_id: str
    data_tag: str

    def select(self, mask: np.ndarray) -> Predictions:
        """The rows where `mask` (n,) bool is true."""
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        return Predictions(*(pick(getattr(self, f)) for f in (
            "patient_id", "source_db", "beat_loc", "label", "role", "prob", "score",
            "prob_adapted")), self.model, self.split_id, self.data_tag)


def save_predictions(path: Path, records, table, beats: np.ndarray, roles: np.ndarray,
                     out: np.ndarray, model: str, split_id: str, data_tag: str,
                     adapted: np.ndarray | None = None) -> Path:
    """Write the outputs `out` of a model for global beat indices `beats`.

    out: (n, 3) logits of a classifier, or (n,) anomaly scores of the autoencoder.
    """
    arrays = {"patient_id": records.patient_id[table.record[beats]],
              "source_db": records.source_db[table.record[beats]],
              "beat_loc": records.beat_locs[beats], "label": table.label[beats],
              "role": np.asarray(roles, dtype=str), "model": np.array(model),
              "split_id": np.array(split_id), "data_tag": np.array(data_tag)}
    if out.ndim == 2:
        arrays["prob"] = softmax(out.astype(np.float64), axis=1).astype(np.float32)
    else:
        arrays["score"] = out.astype(np.float32)
    if adapted is not None:
        arrays["prob_adapted"] = adapted.astype(np.float32)
    return savez(path, **arrays)


def load_predictions(path: Path, split_id: str | None = None,
                     data_tag: str | None = None) -> Predictions:
    """Read a predictions.npz; refuse one that lacks fields or belongs to another split/data."""
    a = read_predictions(path, REQUIRED, split_id, data_tag)
    if "prob" not in a and "score" not in a:
        raise DataError(f"predictions {path} lack ['prob or score']")
    return Predictions(a["patient_id"], a["source_db"], a["beat_loc"], a["label"], a["role"],
                       a.get("prob"), a.get("score"), a.get("prob_adapted"), str(a["model"]),
                       str(a["split_id"]), str(a["data_tag"]))


def save_rows(path: Path, p: Predictions) -> Path:
    """Write `p` as a predictions.npz (for stages that combine other runs' prediction files)."""
    arrays = {f: getattr(p, f) for f in ("patient_id", "source_db", "beat_loc", "label", "role",
                                         "prob", "score", "prob_adapted")}
    return savez(path, **{k: v for k, v in arrays.items() if v is not None},
                 model=np.array(p.model), split_id=np.array(p.split_id),
                 data_tag=np.array(p.data_tag))
