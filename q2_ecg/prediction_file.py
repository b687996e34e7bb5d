"""The files Q2 stages hand to evaluation.

A run's predictions.npz (training, baselines, the ensemble stage) holds, for n beats:
    patient_id (n,) str       record name
    source_db  (n,) str       database of the record
    beat_loc   (n,) int64     the beat's value in the record's beat_locs (sample at 128 Hz)
    label      (n,) int64     true class 0..2
    role       (n,) str       "val" (inner validation: choices only) or "test" (held out)
    prob       (n, 3) float32 class probabilities NOR, SVEB, VEB
    prob_adapted (n, 3)       probabilities after label-free per-record adaptation (optional)
    model, split_id, data_tag 0-d str: what made it, on which fold of which data

The deployed model's file for another dataset (q2_ecg.infer) holds one row per annotated beat:
    patient_id, source_db, beat_loc   as above
    scored     (n,) bool      a beat the brief scores (32..256-sample segment, not UNK)
    pred       (n,) int64     the deployed decision 0..2 (meaningful where scored)
    p_abnormal (n,) float32   P(SVEB or VEB) under the deployed rule
    prob       (n, 3) float32 the fold models' averaged probabilities, before the rule
    final, data_tag           0-d str: the deployed configuration (JSON), the data's tag
Evaluation reads these files only; it never runs a model or rebuilds a split.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy.special import softmax

from common.cli import DataError
from common.io import savez
from common.prediction_files import read_predictions

REQUIRED = ("patient_id", "source_db", "beat_loc", "label", "role", "prob", "model", "split_id",
            "data_tag")
EXTERNAL = ("patient_id", "source_db", "beat_loc", "scored", "pred", "p_abnormal", "prob",
            "final", "data_tag")


@dataclass
class Predictions:
    patient_id: np.ndarray
    source_db: np.ndarray
    beat_loc: np.ndarray
    label: np.ndarray
    role: np.ndarray
    prob: np.ndarray
    prob_adapted: np.ndarray | None
    model: str
    split_id: str
    data_tag: str

    ROWS = ("patient_id", "source_db", "beat_loc", "label", "role", "prob", "prob_adapted")

    def select(self, mask: np.ndarray) -> Predictions:
        """The rows where `mask` (n,) bool is true."""
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        return Predictions(*(pick(getattr(self, f)) for f in self.ROWS), self.model,
                           self.split_id, self.data_tag)


def concat(parts: list[Predictions]) -> Predictions:
    """The rows of several runs' predictions one after another (prob_adapted kept only where
    every part has it; model, split and data of the first part)."""
    def join(f):
        values = [getattr(p, f) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)
    first = parts[0]
    return Predictions(*(join(f) for f in Predictions.ROWS), first.model, first.split_id,
                       first.data_tag)


def save_predictions(path: Path, records, table, beats: np.ndarray, roles: np.ndarray,
                     logits: np.ndarray, model: str, split_id: str, data_tag: str,
                     adapted: np.ndarray | None = None) -> Path:
    """Write a model's logits (n, 3) for global beat indices `beats` (n,) and, optionally, its
    adapted probabilities (n, 3)."""
    p = Predictions(records.patient_id[table.record[beats]],
                    records.source_db[table.record[beats]], records.beat_locs[beats],
                    table.label[beats], np.asarray(roles, dtype=str),
                    softmax(logits.astype(np.float64), axis=1).astype(np.float32),
                    None if adapted is None else adapted.astype(np.float32), model, split_id,
                    data_tag)
    return save_rows(path, p)


def load_predictions(path: Path, split_id: str | None = None,
                     data_tag: str | None = None) -> Predictions:
    """Read a predictions.npz; refuse one that lacks fields or belongs to another split/data."""
    a = read_predictions(path, REQUIRED, split_id, data_tag)
    return Predictions(*(a.get(f) for f in Predictions.ROWS), str(a["model"]),
                       str(a["split_id"]), str(a["data_tag"]))


def save_rows(path: Path, p: Predictions) -> Path:
    """Write `p` as a predictions.npz (for stages that combine other runs' prediction files)."""
    arrays = {f.name: getattr(p, f.name) for f in fields(p)}
    return savez(path, **{k: (np.array(v) if isinstance(v, str) else v)
                          for k, v in arrays.items() if v is not None})


def save_external(path: Path, records, table, pred: np.ndarray, p_abnormal: np.ndarray,
                  prob: np.ndarray, final: dict, data_tag: str) -> Path:
    """The deployed model's decisions for every annotated beat of `records` (see the module
    docstring); rows follow the records' beat order."""
    return savez(path, patient_id=records.patient_id[table.record],
                 source_db=records.source_db[table.record], beat_loc=records.beat_locs,
                 scored=table.scored, pred=pred.astype(np.int64),
                 p_abnormal=p_abnormal.astype(np.float32), prob=prob.astype(np.float32),
                 final=np.array(json.dumps(final, sort_keys=True)), data_tag=np.array(data_tag))


def read_external(path: Path, records) -> dict:
    """A file of save_external joined with the true labels of `records`: its arrays plus
    "label" (n,), "final" (dict). Refuses a file whose rows are not the records' beats."""
    a = read_predictions(path, EXTERNAL, None, None)
    if len(a["beat_loc"]) != len(records.beat_locs) or not (
            np.array_equal(a["beat_loc"], records.beat_locs)
            and np.array_equal(a["patient_id"], records.patient_id[records.beat_record])):
        raise DataError(f"{path} does not hold the beats of this data ({len(a['beat_loc'])} rows, "
                        f"the data has {len(records.beat_locs)} beats): predict it with "
                        "python -m q2_ecg.infer --data <this data>")
    return {**a, "label": records.beat_labels, "final": json.loads(str(a["final"]))}
